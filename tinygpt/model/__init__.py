"""The model itself: GPTConfig (config.py), CharTokenizer (tokenizer.py), and the GPT with its KV cache
and sampling (gpt.py).
"""
