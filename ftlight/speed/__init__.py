"""Speed: the parts that make a step or an evaluation faster without changing what it computes
(``ftlight.speed.plan`` names them and their switches). Measurement lives in
``ftlight.measure``."""
