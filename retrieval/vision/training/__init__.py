"""Training our own DELG model (``manage.py train_model``).

``delg_model`` builds the network (backbone, GeM + whitening + ArcFace global head,
attention + autoencoder local head) and its SavedModel export with the official DELG
serving signature; ``trainer`` runs the data pipeline, the training loop and the export.
Both import TensorFlow at the top: only the ``train_model`` command imports them, inside
its ``handle``; web code never does. No Django here.
"""
