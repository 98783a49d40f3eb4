"""Writes, one module per job; keyword-only arguments. Reads live in ``retrieval.selectors``.

- ``catalogs``: catalogs, landmarks, the extractor of a catalog, scheduling DBA refreshes
- ``augmentation``: the DBA refresh itself (incremental through the index, or full)
- ``ingest``: validating uploads (header only) and storing catalog photos
- ``indexing``: extracting a photo and storing its descriptor row; feature models
- ``search``: storing, running, waiting for and purging searches
- ``reindex``: re-extracting catalogs with another model in the background
- ``thumbnails``: the small JPEGs the pages show instead of the originals
- ``prewarm``: reading what searches need into PostgreSQL's cache
- ``queueing``: claims on rows and sending tasks (with the sweep in ``retrieval.recovery``)

The names below are the public API the views, commands, tasks and tests call.
"""

from retrieval.services.augmentation import catalog_augment
from retrieval.services.catalogs import (
    catalog_create,
    catalog_extractor_spec,
    catalog_get_or_create,
    catalog_rebuild_augmentation,
    catalog_request_augmentation,
    catalog_update,
    landmark_get_or_create,
)
from retrieval.services.indexing import descriptor_store, feature_model_ensure, image_index
from retrieval.services.ingest import (
    IngestResult,
    UploadReport,
    image_decode,
    image_delete,
    image_ingest,
    image_ingest_unique,
    image_inspect,
    image_rendition,
    images_requeue,
    images_upload,
    import_job_finish,
    import_job_start,
)
from retrieval.services.prewarm import PrewarmedRelation, search_working_set_prewarm
from retrieval.services.queueing import DATABASE_ERRORS
from retrieval.services.reindex import catalog_select_model, reindex_run, reindex_start
from retrieval.services.search import search_create, search_execute, search_purge_expired, search_wait
from retrieval.services.thumbnails import thumbnail_ensure, thumbnail_name, thumbnail_store

__all__ = [
    "DATABASE_ERRORS",
    "IngestResult",
    "PrewarmedRelation",
    "UploadReport",
    "catalog_augment",
    "catalog_create",
    "catalog_extractor_spec",
    "catalog_get_or_create",
    "catalog_rebuild_augmentation",
    "catalog_request_augmentation",
    "catalog_select_model",
    "catalog_update",
    "descriptor_store",
    "feature_model_ensure",
    "image_decode",
    "image_delete",
    "image_index",
    "image_ingest",
    "image_ingest_unique",
    "image_inspect",
    "image_rendition",
    "images_requeue",
    "images_upload",
    "import_job_finish",
    "import_job_start",
    "landmark_get_or_create",
    "reindex_run",
    "reindex_start",
    "search_create",
    "search_execute",
    "search_purge_expired",
    "search_wait",
    "search_working_set_prewarm",
    "thumbnail_ensure",
    "thumbnail_name",
    "thumbnail_store",
]
