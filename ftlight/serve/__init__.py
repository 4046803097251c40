"""Serving what a run trained: GGUF (llama.cpp), Ollama, merged and adapter exports."""
