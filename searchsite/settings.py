"""Django settings. Every value comes from the environment (see README, "Configuration")."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url

from searchsite import env
from searchsite.embedded import read_services_file

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = env.get_path("LANDMARKS_DATA_DIR", BASE_DIR / "var")
MEDIA_ROOT = env.get_path("LANDMARKS_MEDIA_DIR", DATA_DIR / "media")
MODEL_DIR = env.get_path("LANDMARKS_MODEL_DIR", BASE_DIR / "var" / "models")

# With DATABASE_URL / REDIS_URL unset, use the embedded servers that `make run`
# (searchsite.launcher) started and described in var/run/services.env.
_embedded = read_services_file(DATA_DIR)
DATABASE_URL = env.get_optional_str("DATABASE_URL") or _embedded.get("DATABASE_URL")
REDIS_URL = env.get_optional_str("REDIS_URL") or _embedded.get("REDIS_URL") or "redis://127.0.0.1:6379/0"

SECRET_KEY = env.get_str("DJANGO_SECRET_KEY", "insecure-local-development-key-change-me")
DEBUG = env.get_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env.get_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.get_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

# HTTPS. Off by default so that `make run` works over plain http. DJANGO_HTTPS=true turns
# the secure set on at once (SSL redirect, secure cookies, one year of HSTS with
# subdomains and preload: what `check --deploy` asks for); each variable below overrides
# its part, e.g. DJANGO_SECURE_HSTS_SECONDS=3600 while trying HTTPS out.
HTTPS = env.get_bool("DJANGO_HTTPS", False)
SECURE_SSL_REDIRECT = env.get_bool("DJANGO_SECURE_SSL_REDIRECT", HTTPS)
SESSION_COOKIE_SECURE = env.get_bool("DJANGO_SESSION_COOKIE_SECURE", HTTPS)
CSRF_COOKIE_SECURE = env.get_bool("DJANGO_CSRF_COOKIE_SECURE", HTTPS)
SECURE_HSTS_SECONDS = env.get_int("DJANGO_SECURE_HSTS_SECONDS", 31_536_000 if HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.get_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env.get_bool("DJANGO_SECURE_HSTS_PRELOAD", HTTPS)
# Behind a TLS-terminating proxy: the header (as a META key) and value that mean "https",
# e.g. HTTP_X_FORWARDED_PROTO,https. Only set it when the proxy always sets that header.
SECURE_PROXY_SSL_HEADER = env.get_optional_pair("DJANGO_SECURE_PROXY_SSL_HEADER")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_ratelimit",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "retrieval",
]

MIDDLEWARE = [
    "searchsite.middleware.RequestBodyLimitMiddleware",  # first: refuses before the body is read
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_ratelimit.middleware.RatelimitMiddleware",  # Ratelimited -> RATELIMIT_VIEW (429)
    "retrieval.middleware.ServiceUnavailableMiddleware",
]

# Every response, pages, API, admin and stored photos, gets this policy (django-csp):
# scripts and styles only from our static files, no plugins, no framing. The admin needs
# nothing more (Django's admin templates have no inline script or style).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    }
}
# Django's default, stated because stored uploads rely on it (SecurityMiddleware adds
# the header to every response, FileResponse included).
SECURE_CONTENT_TYPE_NOSNIFF = True

# The JSON API (retrieval/api): session or token auth (tokens: `manage.py drf_create_token`
# or the admin), JSON only, errors as {"error": message} (retrieval.api.errors).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "retrieval.api.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "retrieval.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Landmark search API",
    "DESCRIPTION": "Search a catalog of landmark photos with a photo; manage catalogs, images and reindex jobs.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from the sidecar's static files: works offline and under the CSP.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Catalog images and searches/jobs both have a "status" with different values.
    "ENUM_NAME_OVERRIDES": {
        "ImageStatusEnum": "retrieval.models.CatalogImage.Status",
        "JobStatusEnum": "retrieval.models.ReindexJob.Status",
    },
}

ROOT_URLCONF = "searchsite.urls"
WSGI_APPLICATION = "searchsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL or "postgres://postgres@127.0.0.1:5432/landmarks",
        conn_max_age=60,
        # A kept connection is checked before each request, so a PostgreSQL restart costs
        # no failed request (and workers check theirs before each task).
        conn_health_checks=True,
    )
}
DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = 5
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Only `collectstatic` (Docker image) needs STATIC_ROOT; otherwise WhiteNoise serves from the apps.
STATIC_ROOT = env.get_optional_str("LANDMARKS_STATIC_ROOT")
MEDIA_URL = "media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True  # serve admin assets without a collectstatic step

# Uploads: anything larger than this is refused before it is decoded.
LANDMARKS_MAX_UPLOAD_BYTES = env.get_int("LANDMARKS_MAX_UPLOAD_BYTES", 20 * 1024 * 1024, minimum=1024)
# Multipart boundaries and the small form fields sent next to one photo.
LANDMARKS_FORM_OVERHEAD_BYTES = 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = LANDMARKS_MAX_UPLOAD_BYTES + LANDMARKS_FORM_OVERHEAD_BYTES
# Whole request bodies: searchsite.middleware answers 413 from Content-Length before the
# body is read. Admin pages take bulk uploads of many photos; 256 MiB is ~50 phone photos
# a batch (streamed to temporary files, not held in memory); larger catalogs go through
# `manage.py import_catalog`. Every other path: one upload + the form overhead.
LANDMARKS_MAX_REQUEST_BYTES = env.get_int("LANDMARKS_MAX_REQUEST_BYTES", 256 * 1024 * 1024, minimum=1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
DATA_UPLOAD_MAX_NUMBER_FILES = env.get_int("LANDMARKS_MAX_FILES_PER_UPLOAD", 500, minimum=1)
LANDMARKS_MAX_IMAGE_PIXELS = env.get_int("LANDMARKS_MAX_IMAGE_PIXELS", 50_000_000, minimum=1024)
# Query photos: far lower, since anyone can send them (a worker decodes 3 bytes a pixel,
# the extractor more); the web process reads only the header of either kind.
LANDMARKS_MAX_QUERY_PIXELS = env.get_int("LANDMARKS_MAX_QUERY_PIXELS", 16_000_000, minimum=1024)
LANDMARKS_MIN_IMAGE_SIDE = env.get_int("LANDMARKS_MIN_IMAGE_SIDE", 32, minimum=1)

# Rate limits (django-ratelimit), counted per client IP in the Redis cache below, which
# every gunicorn process shares: searches (API and form together) and admin logins (per
# IP and per username). Redis down: the cache ignores the errors and the limits are
# off (fail open), so the site keeps answering.
LANDMARKS_SEARCH_RATE = env.get_rate("LANDMARKS_SEARCH_RATE", "30/m")
LANDMARKS_LOGIN_RATE = env.get_rate("LANDMARKS_LOGIN_RATE", "10/m")
RATELIMIT_VIEW = "retrieval.views.rate_limited"
RATELIMIT_FAIL_OPEN = True
# Behind a reverse proxy every request comes from the proxy: name the META key of the
# header that carries the client's address (e.g. HTTP_X_FORWARDED_FOR; the last entry,
# the one the proxy added, is used).
LANDMARKS_CLIENT_IP_HEADER = env.get_optional_str("LANDMARKS_CLIENT_IP_HEADER")
RATELIMIT_IP_META_KEY = "searchsite.middleware.client_ip" if LANDMARKS_CLIENT_IP_HEADER else None


def _redis_db(url: str, db: int) -> str:
    """``url`` with another database number (redis:// and rediss:// URLs)."""
    parts = urlsplit(url)
    return parts._replace(path=f"/{db}").geturl() if parts.scheme in ("redis", "rediss") else url


# The broker uses REDIS_URL's database; the cache another one, so that clearing either
# never touches the other.
LANDMARKS_CACHE_URL = env.get_optional_str("LANDMARKS_CACHE_URL") or _redis_db(REDIS_URL, 1)
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": LANDMARKS_CACHE_URL,
        "KEY_PREFIX": "landmarks",
        "OPTIONS": {
            "IGNORE_EXCEPTIONS": True,  # Redis down: a cache miss, never a 500
            "SOCKET_CONNECT_TIMEOUT": 0.5,
            "SOCKET_TIMEOUT": 0.5,
        },
    }
}

# Feature extraction and search.
LANDMARKS_EXTRACTOR = env.get_str("LANDMARKS_EXTRACTOR", "effnet-lite2-dense")
LANDMARKS_MAX_KEYPOINTS = env.get_int("LANDMARKS_MAX_KEYPOINTS", 1000, minimum=10)
# Dense CNN cells kept per image by the effnet-*-local features (~3000 at 1024 px).
LANDMARKS_MAX_LOCAL_CELLS = env.get_int("LANDMARKS_MAX_LOCAL_CELLS", 2000, minimum=10)
# A query's dense cells are also extracted at these factors of 1024 px, and each
# candidate is verified against the size that fits it best ("1" switches this off:
# 3x faster verification, lower recall on photos taken nearer or farther away).
LANDMARKS_QUERY_SCALES = env.get_float_list("LANDMARKS_QUERY_SCALES", [0.5, 1.0, 2.0], minimum=0.1)
# effnet-*-dense (the default): cells kept at 1024 px (fine) and at the global size
# (LANDMARKS_GLOBAL_IMAGE_SIZE, 512 px: coarse) per catalog photo, and the coarse cells of a query (never stored, so it may keep more).
LANDMARKS_DENSE_FINE_SIZE = env.get_int("LANDMARKS_DENSE_FINE_SIZE", 1024, minimum=64)
# effnet-*-dense: the global descriptor's scales (of LANDMARKS_GLOBAL_IMAGE_SIZE). At 2 the
# largest global pass is the fine pass (1024 px), so a photo takes three network passes, not four.
LANDMARKS_DENSE_GLOBAL_SCALES = env.get_float_list("LANDMARKS_DENSE_GLOBAL_SCALES", [0.7071, 1.0, 2.0], minimum=0.05)
LANDMARKS_DENSE_FINE_CELLS = env.get_int("LANDMARKS_DENSE_FINE_CELLS", 1000, minimum=10)
LANDMARKS_DENSE_COARSE_CELLS = env.get_int("LANDMARKS_DENSE_COARSE_CELLS", 500, minimum=0)
LANDMARKS_DENSE_QUERY_FINE_CELLS = env.get_int("LANDMARKS_DENSE_QUERY_FINE_CELLS", 1000, minimum=10)
LANDMARKS_DENSE_QUERY_COARSE_CELLS = env.get_int("LANDMARKS_DENSE_QUERY_COARSE_CELLS", 500, minimum=0)
# A product quantiser for the stored local descriptors (``manage.py train_codebook``):
# ~32 kB a photo instead of ~198 kB, at some cost in quality (docs/quality.md). Unset:
# int8 rows. Setting it (or changing it) makes a new model version: reindex.
LANDMARKS_LOCAL_CODEBOOK = env.get_optional_path("LANDMARKS_LOCAL_CODEBOOK")
LANDMARKS_SHORTLIST_SIZE = env.get_int("LANDMARKS_SHORTLIST_SIZE", 100, minimum=1)
LANDMARKS_VERIFY_TOP = env.get_int("LANDMARKS_VERIFY_TOP", 100, minimum=0)
# Verification stops early once the answer is decided (services/search: at least this
# many candidates verified, one landmark far ahead); 0 always verifies VERIFY_TOP.
LANDMARKS_VERIFY_EARLY_STOP = env.get_int("LANDMARKS_VERIFY_EARLY_STOP", 10, minimum=0)
# A starting search worker reads the search tables and indexes into PostgreSQL's cache
# (services.search_working_set_prewarm, searchsite/celery.py).
LANDMARKS_PREWARM = env.get_bool("LANDMARKS_PREWARM", True)
# Candidates verified at once by one search (threads: matching and RANSAC release the GIL).
LANDMARKS_VERIFY_THREADS = env.get_int("LANDMARKS_VERIFY_THREADS", min(4, os.cpu_count() or 1), minimum=1)
# Inliers for "same place"; unset: the value calibrated for the local feature in use.
LANDMARKS_MIN_INLIERS = env.get_optional_int("LANDMARKS_MIN_INLIERS", minimum=4)
# A new catalog photo is flagged (not refused) as the near duplicate of an earlier one of
# its catalog when their plain global cosine reaches the first value and one similarity
# transform carries at least the second share of their matches (and the "same place"
# inliers): copies, not other shots of one spot. bench/near_duplicates.py on paris5
# (docs/quality.md); a similarity above 1 switches the check off.
LANDMARKS_NEAR_DUPLICATE_SIMILARITY = env.get_float("LANDMARKS_NEAR_DUPLICATE_SIMILARITY", 0.88, minimum=0.0)
LANDMARKS_NEAR_DUPLICATE_SHARE = env.get_float("LANDMARKS_NEAR_DUPLICATE_SHARE", 0.6, minimum=0.0)
# Query photos and their results are deleted this many days after the search (hourly
# task search_purge_expired); 0 keeps them forever.
LANDMARKS_QUERY_RETENTION_DAYS = env.get_int("LANDMARKS_QUERY_RETENTION_DAYS", 30, minimum=0)
LANDMARKS_SEARCH_WAIT_SECONDS = env.get_float("LANDMARKS_SEARCH_WAIT_SECONDS", 60.0, minimum=0.0)
# Requests per web process that may wait for a search result at once; the others answer
# 202 with a URL to poll at once, so waiting searches never take every thread of the site.
LANDMARKS_SEARCH_WAITERS = env.get_int("LANDMARKS_SEARCH_WAITERS", 2, minimum=0)
# Query expansion (alpha-QE) and database-side augmentation (DBA); 0 switches each off.
LANDMARKS_QE_NEIGHBOURS = env.get_int("LANDMARKS_QE_NEIGHBOURS", 10, minimum=0)
LANDMARKS_DBA_NEIGHBOURS = env.get_int("LANDMARKS_DBA_NEIGHBOURS", 10, minimum=0)
LANDMARKS_EXPANSION_ALPHA = env.get_float("LANDMARKS_EXPANSION_ALPHA", 3.0, minimum=0.0)
LANDMARKS_AUGMENT_DELAY_SECONDS = env.get_float("LANDMARKS_AUGMENT_DELAY_SECONDS", 5.0, minimum=0.0)
# A full augmentation (retrieval.services.augmentation) is exact up to this many rows of a
# model in a catalog (N x D float32 in the worker's memory); above, it goes through the index.
LANDMARKS_DBA_EXACT_MAX_ROWS = env.get_int("LANDMARKS_DBA_EXACT_MAX_ROWS", 50_000, minimum=0)
LANDMARKS_HNSW_EF_SEARCH = env.get_int("LANDMARKS_HNSW_EF_SEARCH", 200, minimum=1)
# The HNSW graph of a model's index, fixed when the index is created (pgvector's defaults;
# a catalog of a million photos wants a denser one: bench/README.md, scale.py).
LANDMARKS_HNSW_M = env.get_int("LANDMARKS_HNSW_M", 16, minimum=2)
LANDMARKS_HNSW_EF_CONSTRUCTION = env.get_int("LANDMARKS_HNSW_EF_CONSTRUCTION", 64, minimum=4)

# Celery: JSON only; searches and indexing on separate queues so that a bulk import
# never makes a person wait behind it.
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "index"
CELERY_TASK_ROUTES = {
    # An exact name wins over the pattern: housekeeping never delays a person's search.
    "retrieval.tasks.search_purge_expired": {"queue": "housekeeping"},
    "retrieval.tasks.search_*": {"queue": "search"},
    # Its own queue, consumed by the search worker in turn with searches: neither a bulk
    # import nor a backlog of searches holds recovery up.
    "retrieval.tasks.work_sweep": {"queue": "housekeeping"},
}
CELERY_TASK_ALWAYS_EAGER = env.get_bool("LANDMARKS_TASKS_EAGER", False)
# An unacknowledged message (its worker was killed) comes back after this long; the sweep
# below usually recovers the work sooner. Longer tasks (reindex) renew their row's claim,
# so a second delivery while the first still works does nothing.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.get_int("LANDMARKS_BROKER_VISIBILITY_TIMEOUT", 600, minimum=10),
    "socket_connect_timeout": 3,
    "socket_timeout": 10,
}
# With the broker away, a web request learns it within ~2 s (and answers 503) instead of
# hanging in publish retries.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CELERY_BROKER_CONNECTION_MAX_RETRIES = None  # workers wait for the broker forever
# The extractor loads in each pool process before it reports ready (searchsite/celery.py):
# ~7 s on 2 cores, more under load; Celery's 4 s default killed every new pool process.
CELERY_WORKER_PROC_ALIVE_TIMEOUT = env.get_float("LANDMARKS_WORKER_START_TIMEOUT", 120.0, minimum=4.0)

# Recovery (retrieval/recovery.py): a claim without progress for this long belongs to a
# dead worker; each row gets this many claims; searches older than this are given up.
LANDMARKS_TASK_LEASE_SECONDS = env.get_float("LANDMARKS_TASK_LEASE_SECONDS", 120.0, minimum=1.0)
LANDMARKS_TASK_MAX_ATTEMPTS = env.get_int("LANDMARKS_TASK_MAX_ATTEMPTS", 3, minimum=1)
LANDMARKS_SEARCH_GIVE_UP_SECONDS = env.get_float("LANDMARKS_SEARCH_GIVE_UP_SECONDS", 600.0, minimum=1.0)
LANDMARKS_SWEEP_SECONDS = env.get_float("LANDMARKS_SWEEP_SECONDS", 15.0, minimum=1.0)
CELERY_BEAT_SCHEDULE = {
    "work-sweep": {
        "task": "retrieval.tasks.work_sweep",
        "schedule": LANDMARKS_SWEEP_SECONDS,
        "options": {"expires": LANDMARKS_SWEEP_SECONDS},
    },
    "search-purge-expired": {"task": "retrieval.tasks.search_purge_expired", "schedule": 3600.0},
}

LOG_LEVEL = env.get_str("LANDMARKS_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "retrieval": {"level": LOG_LEVEL},
        "searchsite": {"level": LOG_LEVEL},
    },
}
LANDMARKS_GLOBAL_IMAGE_SIZE = env.get_int("LANDMARKS_GLOBAL_IMAGE_SIZE", 512, minimum=64)
LANDMARKS_GLOBAL_SCALES = env.get_float_list("LANDMARKS_GLOBAL_SCALES", [0.7071, 1.0, 1.4142], minimum=0.05)
