#!/usr/bin/env bash
# launch/local_cluster.sh start   (then: export SLURM_CONF=/tmp/ftlight-slurm/slurm.conf; sbatch ...)
# A real two-node SLURM cluster on this machine, for tests and trying launch/slurm.sbatch:
# munged, slurmctld and two slurmd daemons (nodes n1 and n2, one CPU each, both 127.0.0.1).
#
#   launch/local_cluster.sh start    install slurm-wlm and munge if missing (apt-get), write the
#                                    config, start the daemons, wait until both nodes are idle
#   launch/local_cluster.sh stop     stop what start started (and the /etc/hosts line it added)
#   launch/local_cluster.sh status   sinfo
#
# Needs root (apt-get, munged, slurmd). The config and the daemons' state and logs live in
# $FTLIGHT_SLURM_DIR (default /tmp/ftlight-slurm); the system's /etc/slurm is left alone, so
# every client command needs SLURM_CONF=$FTLIGHT_SLURM_DIR/slurm.conf. The last line `start`
# prints is that export.
set -euo pipefail

DIR="${FTLIGHT_SLURM_DIR:-/tmp/ftlight-slurm}"
CONF="${DIR}/slurm.conf"
CTLD_PORT="${FTLIGHT_SLURM_PORT:-16817}"   # slurmctld; the nodes listen on 17001 and 17002
NODES=(n1 n2)
HOSTS_LINE="127.0.0.1 ${NODES[*]}   # ftlight local_cluster"
export SLURM_CONF="${CONF}"

die() { echo "local_cluster: $*" >&2; exit 1; }

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "slurm is not installed (${missing[*]} missing) and there is no apt-get"
  echo "local_cluster: installing slurm-wlm munge (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q slurm-wlm munge >/dev/null; } \
    || die "apt-get install slurm-wlm munge failed"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  munge_works && return 0
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    head -c 1024 /dev/urandom > /etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  munged --force 2>>"${DIR}/munged.err"   # as root: --force past its ownership checks
  touch "${DIR}/munged.ours"
  for _ in $(seq 50); do munge_works && return 0; sleep 0.1; done
  die "munged did not start"
}

write_config() {
  local host
  host="$(hostname -s)"
  mkdir -p "${DIR}/state" "${DIR}/spool" "${DIR}/log"
  cat > "${CONF}" <<EOF
# written by launch/local_cluster.sh: two nodes on one machine
ClusterName=ftlight
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5   # a requeued job waits this long before it starts again (default 120 s)
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=30
MinJobAge=600
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1   # start a requeued job as soon as it may
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool/%n
SlurmctldPidFile=${DIR}/slurmctld.pid
SlurmdPidFile=${DIR}/slurmd-%n.pid
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd-%n.log
NodeName=n1 NodeHostname=${host} NodeAddr=127.0.0.1 Port=17001 CPUs=1 RealMemory=4000 State=UNKNOWN
NodeName=n2 NodeHostname=${host} NodeAddr=127.0.0.1 Port=17002 CPUs=1 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
  # Lightning takes the rendezvous address from the first node name of the allocation
  grep -q "ftlight local_cluster" /etc/hosts || echo "${HOSTS_LINE}" >> /etc/hosts
}

wait_idle() {
  local idle
  for _ in $(seq 120); do
    idle="$(sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 == "idle" {n++} END {print n + 0}')"
    [ "${idle}" -ge "${#NODES[@]}" ] && return 0
    sleep 0.5
  done
  sinfo -N >&2 || true
  die "the nodes did not become idle; see ${DIR}/log"
}

start() {
  [ "$(id -u)" -eq 0 ] || die "needs root (apt-get, munged, slurmd)"
  mkdir -p "${DIR}"
  install_packages
  if [ -f "${DIR}/slurmctld.pid" ] && kill -0 "$(cat "${DIR}/slurmctld.pid")" 2>/dev/null; then
    wait_idle
    echo "export SLURM_CONF=${CONF}"
    return 0
  fi
  start_munge
  write_config
  slurmctld -c -f "${CONF}"   # -c: a clean job table
  for node in "${NODES[@]}"; do slurmd -N "${node}"; done
  wait_idle
  echo "export SLURM_CONF=${CONF}"
}

stop() {
  if [ -f "${CONF}" ]; then
    scontrol shutdown >/dev/null 2>&1 || true
    for _ in $(seq 100); do
      local alive=0
      for pidfile in "${DIR}"/slurmctld.pid "${DIR}"/slurmd-*.pid; do
        [ -f "${pidfile}" ] && kill -0 "$(cat "${pidfile}")" 2>/dev/null && alive=1
      done
      [ "${alive}" -eq 0 ] && break
      sleep 0.1
    done
  fi
  if [ -f "${DIR}/munged.ours" ] && [ -f /run/munge/munged.pid ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    rm -f "${DIR}/munged.ours"
  fi
  if grep -q "ftlight local_cluster" /etc/hosts 2>/dev/null; then
    # /etc/hosts may be a bind mount: rewrite it in place rather than replacing the file
    grep -v "ftlight local_cluster" /etc/hosts > "${DIR}/hosts" || true
    cat "${DIR}/hosts" > /etc/hosts
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo -N ;;
  *) die "usage: $0 start|stop|status" ;;
esac
