"""Catalogs, landmarks, catalog images, their descriptors, searches and reindex jobs."""

from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Now
from pgvector.django import HalfVectorField

catalog_name_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
    "Use letters, digits, '.', '_' and '-' (starting with a letter or digit).",
)


class FeatureModel(models.Model):
    """One extractor configuration (name + version) that produced stored descriptors.

    Rows of two versions coexist until a reindex switches a catalog over; each model
    gets its own partial HNSW index (see ``retrieval.services.feature_model_ensure``).
    """

    name = models.CharField(max_length=100)
    version = models.CharField(max_length=200)
    global_dim = models.PositiveIntegerField()
    local_dim = models.PositiveIntegerField()
    config = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="featuremodel_unique_version")]

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def hnsw_index_name(self) -> str:
        return f"retrieval_descriptor_plain_m{self.pk}"


class Catalog(models.Model):
    """A searchable collection of landmark photos; a search runs within one catalog."""

    name = models.CharField(max_length=100, unique=True, validators=[catalog_name_validator])
    description = models.TextField(blank=True)
    extractor_spec = models.CharField(
        max_length=200,
        blank=True,
        help_text="Feature extractor for this catalog (e.g. effnet-lite0-gem+rootsift); blank: the server's "
        "LANDMARKS_EXTRACTOR. Changing it starts a reindex.",
    )
    active_model = models.ForeignKey(
        FeatureModel,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The model whose descriptors serve searches; set by indexing and reindex jobs.",
    )
    public = models.BooleanField(
        default=True,
        db_default=True,
        help_text="Anyone may search it. A private catalog is searched only by signed-in or token-authenticated users.",
    )
    augment_pending = models.BooleanField(default=False, help_text="A DBA refresh is scheduled.")
    # When the pending refresh's task was last sent: one not taken long after is lost.
    augment_requested_at = models.DateTimeField(null=True, blank=True)
    augmented_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Landmark(models.Model):
    catalog = models.ForeignKey(Catalog, on_delete=models.CASCADE, related_name="landmarks")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    latitude = models.FloatField(null=True, blank=True)
    longitude = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["catalog", "name"], name="landmark_unique_name_per_catalog")]

    def __str__(self) -> str:
        return self.name


# Stored photos are named after their content: the extension comes from the decoded
# format (``retrieval.vision.preprocessing.read_header``) and is the only thing the
# content type they are served with depends on, so a client cannot choose either.
FORMAT_SUFFIXES = {
    "JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp", "GIF": ".gif",
    "HEIF": ".heic", "AVIF": ".avif",
}  # fmt: skip
SUFFIX_CONTENT_TYPES = {
    ".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".tif": "image/tiff", ".bmp": "image/bmp",
    ".gif": "image/gif", ".heic": "image/heic", ".avif": "image/avif",
}  # fmt: skip
# Formats that most browsers cannot show (HEIC: Safari only; TIFF: Safari only): the
# pages get a JPEG rendition of them (``services.image_rendition``). AVIF is shown by
# every current browser and is served as it is.
RENDITION_SUFFIXES = frozenset({".heic", ".tif"})


def image_suffix(image_format: str) -> str:
    """The stored file's extension for a Pillow format name (``"PNG"`` -> ``".png"``)."""
    return FORMAT_SUFFIXES[image_format]


def image_content_type(name: str) -> str | None:
    """The content type a stored file is served with; None for a name outside the mapping
    (e.g. stored before names were derived from the format)."""
    dot = name.rfind(".")
    return SUFFIX_CONTENT_TYPES.get(name[dot:].lower()) if dot >= 0 else None


def needs_rendition(name: str) -> bool:
    """Whether a stored file is served as a JPEG rendition rather than as it is."""
    dot = name.rfind(".")
    return dot >= 0 and name[dot:].lower() in RENDITION_SUFFIXES


def thumbnail_path(instance: CatalogImage, filename: str) -> str:
    return f"thumbs/{instance.catalog_id}/{instance.sha256[:2]}/{instance.sha256}.jpg"


def catalog_image_path(instance: CatalogImage, filename: str) -> str:
    return f"catalog/{instance.catalog_id}/{instance.sha256[:2]}/{instance.sha256}{_suffix(filename)}"


def query_image_path(instance: SearchQuery, filename: str) -> str:
    return f"queries/{instance.created_at:%Y/%m/%d}/{instance.sha256}{_suffix(filename)}"


def _suffix(filename: str) -> str:
    """The services pass a name made with :func:`image_suffix`; anything else (a client's
    name) keeps no extension, so that it can never be served as HTML."""
    dot = filename.rfind(".")
    suffix = filename[dot:].lower() if dot >= 0 else ""
    return suffix if suffix in SUFFIX_CONTENT_TYPES else ""


class ImportJob(models.Model):
    """One batch of uploads (``import_catalog``, the catalog API, the admin upload page).

    The images point back to it; its progress is counted from their statuses
    (``selectors.import_job_progress``), so it never drifts from what the workers did.
    ``refused`` lists the rows or files that were not stored, with the reason.
    """

    catalog = models.ForeignKey(Catalog, on_delete=models.CASCADE, related_name="import_jobs")
    source = models.CharField(
        max_length=300, blank=True, help_text="Where the files came from (a path, 'api', 'admin')."
    )
    submitted = models.PositiveIntegerField(default=0, help_text="Files or rows offered.")
    duplicates = models.PositiveIntegerField(default=0, help_text="Already in the catalog (same sha256).")
    refused = models.JSONField(default=list, blank=True, help_text="[{'name': ..., 'error': ...}] not stored.")
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True, help_text="When the last file was stored (not indexed).")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"import {self.pk} into {self.catalog_id}"


class CatalogImage(models.Model):
    """A catalog photo.

    Status machine: ``pending`` (stored, task enqueued) -> ``processing`` (a worker
    claimed it) -> ``indexed`` or ``failed`` (``failure_reason`` says why). A reindex or
    a retry puts it back to ``pending``.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        PROCESSING = "processing"
        INDEXED = "indexed"
        FAILED = "failed"

    catalog = models.ForeignKey(Catalog, on_delete=models.CASCADE, related_name="images")
    landmark = models.ForeignKey(Landmark, null=True, blank=True, on_delete=models.SET_NULL, related_name="images")
    file = models.FileField(upload_to=catalog_image_path, max_length=300)
    original_name = models.CharField(max_length=300, blank=True)
    external_id = models.CharField(max_length=200, blank=True, help_text="Id from an imported dataset, if any.")
    sha256 = models.CharField(max_length=64)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    failure_reason = models.TextField(blank=True)
    import_job = models.ForeignKey(
        ImportJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="images",
        help_text="The batch it came with, if any.",
    )  # fmt: skip
    # DB defaults: rows written by code that predates these columns (a rolling upgrade).
    thumbnail = models.FileField(
        upload_to=thumbnail_path, max_length=300, blank=True, db_default="", help_text="Made once, when indexed."
    )
    # Near duplicates are flagged, not refused (exact copies are refused by sha256): the
    # most similar indexed photo when it passes the global and the geometric checks.
    near_duplicate_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
    )  # fmt: skip
    near_duplicate_similarity = models.FloatField(null=True, blank=True)
    near_duplicate_inliers = models.PositiveIntegerField(null=True, blank=True)
    # Claims (see retrieval.services.claims): the Celery task id that works on the row and
    # when it last showed progress; ``queued_at`` is when its task reached the broker.
    claimed_by = models.CharField(max_length=64, blank=True, default="", db_default="")
    claimed_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(
        default=0, db_default=0, help_text="Claims so far; capped (a file that kills workers)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    indexed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["catalog", "sha256"], name="catalogimage_unique_sha256")]
        indexes = [models.Index(fields=["catalog", "status"], name="catalogimage_status")]

    def __str__(self) -> str:
        return self.original_name or self.sha256[:12]


class ImageDescriptor(models.Model):
    """Global descriptor and local features of one image, made by one feature model.

    ``embedding`` is an L2-normalised ``halfvec`` without a fixed dimension so that models
    of different widths (up to 4000, pgvector's halfvec HNSW limit) coexist; each model
    has a partial expression index ``(embedding::halfvec(D)) WHERE model_id = M``. The
    row's DBA descriptor lives in :class:`DescriptorAugmentation`, outside this table, so
    that refreshing it never writes to the HNSW index.
    ``local_features`` is the blob of ``retrieval.vision.features.LocalFeatures``.
    """

    image = models.ForeignKey(CatalogImage, on_delete=models.CASCADE, related_name="descriptors")
    catalog = models.ForeignKey(Catalog, on_delete=models.CASCADE, related_name="+")
    model = models.ForeignKey(FeatureModel, on_delete=models.PROTECT, related_name="descriptors")
    embedding = HalfVectorField()
    local_features = models.BinaryField()
    num_local = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    # DB defaults: rows written by code that predates these columns (a rolling upgrade).
    updated_at = models.DateTimeField(auto_now=True, db_default=Now())

    class Meta:
        constraints = [models.UniqueConstraint(fields=["image", "model"], name="descriptor_unique_image_model")]
        indexes = [
            models.Index(fields=["model", "catalog"], name="descriptor_model_catalog"),
            # The sweep's "changed since the last DBA refresh" test (recovery.py).
            models.Index(fields=["catalog", "updated_at"], name="descriptor_catalog_updated"),
        ]


class DescriptorAugmentation(models.Model):
    """The database-side augmented (DBA) descriptor of one descriptor row
    (``services.augmentation``): the shortlist re-ranks the HNSW index's pool by it.

    A table of its own because an UPDATE of the descriptor row would insert the row into
    the HNSW index again (PostgreSQL updates every index of a row that cannot be updated
    in place), which made each new photo's neighbour refresh cost one graph insert per
    rewritten neighbour.
    """

    descriptor = models.OneToOneField(
        ImageDescriptor, on_delete=models.CASCADE, primary_key=True, related_name="augmentation"
    )
    embedding = HalfVectorField()
    # The rows it was averaged from (image ids, most similar first) and their cosine
    # similarities: a new photo is merged into these lists instead of searching the index
    # again for every row it joins. Empty: not known (the index is searched).
    neighbours = ArrayField(models.BigIntegerField(), default=list, blank=True)
    similarities = ArrayField(models.FloatField(), default=list, blank=True)


class SearchQuery(models.Model):
    """One search.

    Status machine: ``pending`` (stored, task enqueued) -> ``running`` -> ``done`` or
    ``failed`` (``error`` says why). ``results`` is the ranked list; ``timings_ms`` has
    one entry per stage (queue, decode, extract, shortlist, verify, total).
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    # The id in URLs: unguessable, so one user cannot list another's searches.
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    catalog = models.ForeignKey(Catalog, on_delete=models.CASCADE, related_name="searches")
    image = models.FileField(upload_to=query_image_path, max_length=300)
    sha256 = models.CharField(max_length=64)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    bbox = models.JSONField(null=True, blank=True, help_text="[x1, y1, x2, y2] region of the query to search with.")
    top_k = models.PositiveIntegerField(default=10)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True)
    model = models.ForeignKey(FeatureModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    results = models.JSONField(default=list, blank=True)
    landmark_name = models.CharField(max_length=200, blank=True)
    landmark_confidence = models.FloatField(null=True, blank=True)
    timings_ms = models.JSONField(default=dict, blank=True)
    # Claims (see retrieval.services.claims): the Celery task id that works on the row and
    # when it last showed progress; ``queued_at`` is when its task reached the broker.
    claimed_by = models.CharField(max_length=64, blank=True, default="", db_default="")
    claimed_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(
        default=0, db_default=0, help_text="Claims so far; capped (a file that kills workers)."
    )
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "search queries"


class ReindexJob(models.Model):
    """Background re-extraction of a catalog (or all) with the current feature model.

    Status machine: ``pending`` -> ``running`` -> ``done`` / ``failed``. ``processed``
    out of ``total`` is the progress. When it finishes, each catalog's ``active_model``
    switches to ``model``; until then searches keep using the old rows.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    catalog = models.ForeignKey(Catalog, null=True, blank=True, on_delete=models.CASCADE, related_name="reindex_jobs")
    model = models.ForeignKey(
        FeatureModel, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="Set by the worker: the model it re-extracts with.",
    )  # fmt: skip
    stale_only = models.BooleanField(default=False)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    total = models.PositiveIntegerField(default=0)
    processed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    # Claims (see retrieval.services.claims): the Celery task id that works on the row and
    # when it last showed progress; ``queued_at`` is when its task reached the broker.
    claimed_by = models.CharField(max_length=64, blank=True, default="", db_default="")
    claimed_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    @property
    def progress(self) -> float:
        return self.processed / self.total if self.total else 1.0
