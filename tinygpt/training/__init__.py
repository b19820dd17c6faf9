"""Training: the loop (trainer.py), batches of the corpus (data.py), the exact validation loss
(evaluate.py), training a visitor's text for the Train tab (playground.py).
"""
