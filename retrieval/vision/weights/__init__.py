"""Weight readers shared by the extractors: ``torch_weights`` reads PyTorch ``.pth`` state
dicts into numpy without torch or arbitrary pickle code; ``keras_weights`` assigns them to
Keras models and saves the result (imports Keras at the top: only extractors import it)."""
