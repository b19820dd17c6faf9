"""The model's files: checked safetensors weights and training state (checkpoint.py), the model card
(card.py), int8 weights (quantize.py), default paths (paths.py).
"""
