"""skinweb settings: every value can come from the environment; the defaults run after a clone.

Defaults: SQLite in var/, a local Redis, media and models under var/. docker/.env.example lists
every variable.
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from kombu import Queue

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name, default=None):
    return os.environ.get(name, default)


TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def env_bool(name, default=False):
    """A boolean setting; anything but the usual spellings is refused (DEBUG=ture must not mean off)."""
    value = env(name, str(default)).strip().lower()
    if value not in TRUE | FALSE:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{name}={value!r} is not a boolean: use one of 1/0, true/false, yes/no, on/off")
    return value in TRUE


def env_json_list(name):
    """A JSON list of objects (empty when unset); a malformed value stops the start-up."""
    import json

    text = env(name, "").strip()
    try:
        value = json.loads(text) if text else []
    except ValueError as exc:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{name} is not JSON: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{name} must be a JSON list of objects")
    return value


def env_int(name, default):
    return int(env(name, default))


def env_jpeg_quality(name, default):
    """A JPEG quality range for training ("LO,HI", one quality, or empty for none), checked here so a
    typo stops the start-up, not a training run hours later."""
    from classifier.training.data import jpeg_quality_range

    text = env(name, default).strip()
    try:
        jpeg_quality_range(text)
    except ValueError as exc:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{name}={exc}") from None
    return text


def env_share(name, default):
    """A fraction in [0, 1]."""
    try:
        value = float(env(name, default))
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{name}={env(name, default)!r}: expected a share between 0 and 1")
    return value


VAR_DIR = Path(env("SKINWEB_VAR_DIR", BASE_DIR / "var"))

# Placeholder used when SECRET_KEY is unset; the deploy check refuses it (skinweb.checks).
INSECURE_SECRET_KEY = "insecure-development-key-do-not-use-in-production"
SECRET_KEY = env("SECRET_KEY", INSECURE_SECRET_KEY)
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
CSRF_TRUSTED_ORIGINS = [o for o in env("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "crispy_forms",
    "crispy_bootstrap5",
    "axes",
    "csp",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "skinweb.accounts",
    "skinweb.models_registry",
    "skinweb.clinic",
    "skinweb.referrals",
    "skinweb.audit",
    "skinweb.api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "skinweb.accounts.middleware.UserLanguageMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "skinweb.accounts.twofactor.SecondFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "skinweb.accounts.middleware.SessionTimeoutMiddleware",
    "skinweb.referrals.access.ReferrerScopeMiddleware",
    "axes.middleware.AxesMiddleware",
]

# Login throttling (django-axes): AXES_FAILURE_LIMIT failed logins for one username from one IP
# pause that pair for AXES_COOLOFF_MINUTES, and past AXES_ADDRESS_FAILURE_LIMIT failures from one IP
# over all usernames (password spraying) the address is slowed; attempts are kept in the database.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend",
                           "skinweb.accounts.sso.Backend"]
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15))
AXES_ADDRESS_FAILURE_LIMIT = env_int("AXES_ADDRESS_FAILURE_LIMIT", 20)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_HANDLER = "skinweb.accounts.throttle.SprayAwareHandler"
AXES_RESET_ON_SUCCESS = True
# The refused page says which pause applies and for how long (skinweb/accounts/throttle.py); attempts refused
# during a pause are not counted and do not restart it.
AXES_LOCKOUT_CALLABLE = "skinweb.accounts.throttle.lockout_response"
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# Past AXES_ADDRESS_FAILURE_LIMIT failures from one address (all usernames), one attempt from it every this many
# seconds: slowed, not locked, since a clinic's staff often share one address.
AXES_ADDRESS_INTERVAL_SECONDS = env_int("AXES_ADDRESS_INTERVAL_SECONDS", 30)
# Two-factor login (skinweb/accounts/twofactor.py, django-otp): TOTP with recovery codes. Required of
# everyone of a clinic whose administrator asks for it, and of platform administrators whenever DEBUG
# is off (not an environment setting: only the tests turn it off); wrong codes count as failed logins.
PLATFORM_ADMIN_TWO_FACTOR = not DEBUG
# Single sign-on (skinweb/accounts/sso.py): OpenID Connect providers, a JSON list of objects with name,
# label, issuer, client_id, client_secret and, unless the issuer's discovery document gives them,
# authorization_endpoint, token_endpoint, userinfo_endpoint, jwks_uri; optional sign_algo (RS256),
# scopes, clinic_claim (skinweb_clinic) and role_claim (skinweb_role). Each provider's redirect URI is
# <site>/accounts/sso/callback/. LOCAL_LOGIN=0 turns password login off (but for platform administrators).
OIDC_PROVIDERS = env_json_list("OIDC_PROVIDERS")
LOCAL_LOGIN = env_bool("LOCAL_LOGIN", True)
OTP_TOTP_ISSUER = "skinweb"
RECOVERY_CODES = 10
PROXY_COUNT = env_int("PROXY_COUNT", 0)  # trusted reverse proxies in front (X-Forwarded-For)
AXES_CLIENT_IP_CALLABLE = "skinweb.accounts.ip.client_ip"

ROOT_URLCONF = "skinweb.urls"
WSGI_APPLICATION = "skinweb.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

# Database: SQLite by default; DATABASE_URL (postgres://user:pass@host:5432/name) selects PostgreSQL.
SQLITE_PATH = Path(env("SQLITE_PATH", VAR_DIR / "skinweb.sqlite3"))
DATABASES = {
    "default": dj_database_url.parse(env("DATABASE_URL") or f"sqlite:///{SQLITE_PATH}", conn_max_age=60)
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets the web process read while a worker writes; IMMEDIATE takes the write lock at
        # BEGIN so two writers queue on the busy timeout instead of failing with "locked".
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # Tests share the database with a real worker process, so it must be a file, not :memory:.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-skinweb.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "clinic:dashboard"
LOGOUT_REDIRECT_URL = "login"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Languages (docs/languages.md): each user's preference (account page), else the browser's, else LANGUAGE_CODE.
# Catalogues in locale/ (compiled by `make run`/`make test`); formats/ keeps English dates in ISO order.
LANGUAGES = [("en", "English"), ("fr", "Français"), ("de", "Deutsch")]
LANGUAGE_CODE = env("LANGUAGE_CODE", "en")
if LANGUAGE_CODE not in dict(LANGUAGES):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"LANGUAGE_CODE={LANGUAGE_CODE!r}: one of {', '.join(dict(LANGUAGES))}")
LOCALE_PATHS = [BASE_DIR / "locale"]
FORMAT_MODULE_PATH = ["skinweb.formats"]
TIME_ZONE = env("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env("STATIC_ROOT", VAR_DIR / "staticfiles"))

# Media hold patient images. There is deliberately no MEDIA_URL route: images are served only by
# views that check access (clinic.views.case_image).
MEDIA_ROOT = Path(env("MEDIA_ROOT", VAR_DIR / "media"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
if env("STORAGE_BACKEND", "filesystem") == "s3":
    # S3-compatible object storage via django-storages (needs boto3 installed).
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env("S3_BUCKET"),
            "endpoint_url": env("S3_ENDPOINT_URL"),
            "access_key": env("S3_ACCESS_KEY_ID"),
            "secret_key": env("S3_SECRET_ACCESS_KEY"),
            "default_acl": "private",
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }

# Published model files live here, named by version.
MODEL_ROOT = Path(env("MODEL_ROOT", VAR_DIR / "models"))
# The locked test split's ledger (classifier.training.evaluate --split locked-test), read by the model pages.
LOCKED_TEST_LEDGER = Path(env("LOCKED_TEST_LEDGER", BASE_DIR / "classifier" / "models" / "locked-test.jsonl"))

# Uploads
MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 20 * 1024 * 1024)
MAX_IMAGE_PIXELS = env_int("MAX_IMAGE_PIXELS", 60_000_000)  # 60 MP: a 9000 x 6500 photo
# The stored copy of an upload is at most this many pixels on its longer side (0: keep the full size).
# 2048 px keeps every detail a dermoscopy review needs (the model reads 224 px) and bounds the cost of
# every later read: the thumbnail is made once at upload, the PDF and the worker read the stored copy.
MAX_STORED_SIDE = env_int("MAX_STORED_SIDE", 2048)
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = 100

CRISPY_ALLOWED_TEMPLATE_PACKS = "bootstrap5"
CRISPY_TEMPLATE_PACK = "bootstrap5"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("HTTPS", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
# A session ends after SESSION_IDLE_MINUTES without a request the user made (status polling does
# not count) and, whatever happens, SESSION_MAX_HOURS after login (accounts/middleware.py).
SESSION_IDLE_MINUTES = env_int("SESSION_IDLE_MINUTES", 30)
SESSION_MAX_HOURS = env_int("SESSION_MAX_HOURS", 12)
SESSION_COOKIE_AGE = SESSION_MAX_HOURS * 3600
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Behind TLS (HTTPS=1): HSTS for a year, redirects to https, the proxy's scheme header trusted.
SECURE_HSTS_SECONDS = 31_536_000 if SESSION_COOKIE_SECURE else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = SESSION_COOKIE_SECURE
# HSTS preloading binds the whole domain for months: the hospital's decision, not ours.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
SECURE_SSL_REDIRECT = SESSION_COOKIE_SECURE
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if SESSION_COOKIE_SECURE else None
# Content Security Policy (django-csp): only this site's own scripts, styles and images; no inline
# script, no framing. Bootstrap's icons are data: SVGs.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# The REST API (skinweb/api, README "REST API"): tokens (django-rest-knox, stored as digests) or the
# browser's session; every call throttled per user (API_RATE_USER) or, unauthenticated, per address
# (API_RATE_ANON), and audited. The schema (drf-spectacular) is at /api/schema/, its docs at /api/docs/.
API_TOKEN_DAYS = env_int("API_TOKEN_DAYS", 90)
KNOX_TOKEN_MODEL = "api.ApiToken"
# knox's own migrations would create its AuthToken table although the model is swapped for ApiToken (a
# table no model owns, with a key to users that stops PostgreSQL from emptying the users table).
MIGRATION_MODULES = {"knox": None}
REST_KNOX = {"TOKEN_TTL": timedelta(days=API_TOKEN_DAYS), "TOKEN_PREFIX": "skw_", "TOKEN_LIMIT_PER_USER": 20,
             "AUTO_REFRESH": False}
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["skinweb.api.auth.TokenAuthentication",
                                       "skinweb.api.auth.BrowserSessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated", "skinweb.api.permissions.NoReferrers"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser", "rest_framework.parsers.MultiPartParser"],
    # Per user; callers that do not authenticate are counted per address first (skinweb.api.views.Guarded).
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": env("API_RATE_USER", "600/min"), "anon": env("API_RATE_ANON", "60/min")},
    "DEFAULT_PAGINATION_CLASS": "skinweb.api.pagination.Pages",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "skinweb.api.views.exception_handler",
    # The address an anonymous caller is throttled by: as client_ip reads it (X-Forwarded-For is forgeable).
    "NUM_PROXIES": PROXY_COUNT,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "skinweb API",
    "DESCRIPTION": "Patients, lesions, visits, image uploads, results, feedback, ground truth and reports of "
                   "your clinic. Authenticate with `Authorization: Token <token>`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "skinweb.api.schema.document_errors"],
    "ENUM_NAME_OVERRIDES": {"DiagnosisEnum": "skinweb.clinic.models.DIAGNOSES",
                            "LabelEnum": "skinweb.clinic.models.Label"},
}
# Shared counters for the API's throttling when several web processes run (docker/ sets it); else
# each process counts on its own.
CACHE_REDIS_URL = env("CACHE_REDIS_URL", "")
if CACHE_REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_REDIS_URL}}

# FHIR R4 (skinweb/clinic/fhir.py): each result is sent as a transaction Bundle to FHIR_ENDPOINT (a
# FHIR server's base URL; empty: nothing is sent, export only) with FHIR_AUTHORIZATION as its
# Authorization header, retried FHIR_PUSH_RETRIES times with growing waits while the server is
# unreachable or failing. SITE_URL: this site's address as the record will link to its images and reports.
SITE_URL = env("SITE_URL", "http://127.0.0.1:8000").rstrip("/")
# How long a referral form waits for an inference worker to say whether its images are lesions (then it is sent
# unchecked, and the worker withholds a result as for any upload); 0: not asked.
REFERRAL_CHECK_SECONDS = float(env("REFERRAL_CHECK_SECONDS", "20"))

# E-mail (referrals: a clinic is told when one arrives, a practice when it is answered; links only, no patient
# details). EMAIL_HOST set: sent through that SMTP server; unset: written to files under var/mail (the demo).
EMAIL_HOST = env("EMAIL_HOST", "")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS")
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "skinweb <skinweb@localhost>")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
else:
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = str(VAR_DIR / "mail")
FHIR_ENDPOINT = env("FHIR_ENDPOINT", "")
FHIR_AUTHORIZATION = env("FHIR_AUTHORIZATION", "")
FHIR_PUSH_RETRIES = env_int("FHIR_PUSH_RETRIES", 6)

# Celery: Redis broker; results live in the database (Case, Prediction), not in Celery.
REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
# Results are kept for the one task a page waits on (tasks.check_lesions: a referral's images checked before it
# is sent); every other task ignores its result.
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_RESULT_EXPIRES = 600
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_QUEUES = [
    Queue("default", routing_key="default"),
    Queue("inference", routing_key="inference"),
    Queue("training", routing_key="training"),
    Queue("explain", routing_key="explain"),
    # Builds of a version's artefacts (fast path, reference library): minutes to an hour of CPU each, on a
    # low-priority worker of their own, so that no classification and no training run waits behind them.
    Queue("builds", routing_key="builds"),
]
CELERY_TASK_ROUTES = {
    "skinweb.clinic.tasks.sweep": {"queue": "default"},
    # Heat maps: their own queue, so a worker (or a lower-priority process) apart from classification
    # can take them; results never wait behind explanations.
    "skinweb.clinic.tasks.explain": {"queue": "explain"},
    "skinweb.clinic.tasks.push_fhir": {"queue": "default"},
    "skinweb.clinic.tasks.*": {"queue": "inference"},
    "skinweb.models_registry.tasks.train_model": {"queue": "training"},
    "skinweb.models_registry.tasks.shadow_check": {"queue": "training"},
    "skinweb.models_registry.tasks.build_fast_path": {"queue": "builds"},
    "skinweb.models_registry.tasks.build_reference": {"queue": "builds"},
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The sweeps, every SWEEP_INTERVAL seconds: cases queued or running for more than SWEEP_QUEUED_AFTER
# seconds without a live worker get their task sent again (skinweb/clinic/sweep.py); training runs that
# went silent fail, and the published version's fast path is asked for if it never was (models_registry).
SWEEP_INTERVAL = env_int("SWEEP_INTERVAL", 60)
SWEEP_QUEUED_AFTER = env_int("SWEEP_QUEUED_AFTER", 300)
CELERY_BEAT_SCHEDULE = {
    "sweep": {"task": "skinweb.clinic.tasks.sweep", "schedule": float(SWEEP_INTERVAL)},
    "registry-sweep": {"task": "skinweb.models_registry.tasks.sweep", "schedule": float(SWEEP_INTERVAL)},
}
# A message not acknowledged within this time is delivered again. Training runs take hours, so it
# is long; classification is covered sooner by the database sweep of stale cases.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 12 * 3600}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# A worker told to stop (with REMAP_SIGTERM=SIGQUIT, as the demo's builder and trainer are) gives a running
# task this many seconds, then hands its message back to the broker: stopping the stack does not wait for a
# build or a training run to end (the build starts again, the run resumes from its checkpoint).
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = float(env("WORKER_SOFT_SHUTDOWN_TIMEOUT", "3"))

# Inference device for workers: auto (CUDA when present), cpu or cuda.
INFERENCE_DEVICE = env("INFERENCE_DEVICE", "auto")
# Batching: a worker classifies up to INFERENCE_BATCH_SIZE queued cases in one forward pass, waiting
# up to INFERENCE_BATCH_WAIT_MS for a burst of uploads to arrive. A case another worker claimed
# less than INFERENCE_CLAIM_TIMEOUT seconds ago is left to that worker.
# 4 on the CPU: int8 throughput does not grow with the batch while activation memory does (the
# worker's 1 GB budget; docs/benchmarks.md, "Figures behind the defaults"); a GPU worker wants more (docker/ sets 64).
INFERENCE_BATCH_SIZE = env_int("INFERENCE_BATCH_SIZE", 4)
INFERENCE_BATCH_WAIT_MS = env_int("INFERENCE_BATCH_WAIT_MS", 100)
INFERENCE_CLAIM_TIMEOUT = env_int("INFERENCE_CLAIM_TIMEOUT", 120)
# Dataset folders (labels.csv layout, separated by ":") for int8 calibration and, later, retraining.
# Default: none (`make run` passes the ISIC development set when it sits beside the checkout).
TRAINING_DATASETS = [Path(p) for p in env("TRAINING_DATASETS", "").split(":") if p]
# The reference library of similar confirmed lesions (issue 32): the dataset its development part is
# built from (default: the first of TRAINING_DATASETS), whether parts licensed for non-commercial use
# only (HAM10000, ISIC 2018/2020) are shown (a commercial deployment sets 0), and how many neighbours.
REFERENCE_DATASET = env("REFERENCE_DATASET", "")
REFERENCE_NONCOMMERCIAL = env_bool("REFERENCE_NONCOMMERCIAL", True)
REFERENCE_NEIGHBOURS = env_int("REFERENCE_NEIGHBOURS", 8)
# Retraining from the published version: epochs, peak learning rate, batch size, device
# (auto: CUDA when present), and after how many seconds without an epoch a run counts as dead.
RETRAIN_EPOCHS = env_int("RETRAIN_EPOCHS", 10)
RETRAIN_LR = float(env("RETRAIN_LR", "0.0003"))
RETRAIN_BATCH_SIZE = env_int("RETRAIN_BATCH_SIZE", 32)
# Re-encode this share of the training views as JPEG at a quality drawn from LO,HI (empty: never), as
# the starter was trained: uploads come from many cameras and codecs, and the network should not
# learn one codec's artefacts (docs/experiments.md).
RETRAIN_JPEG_QUALITY = env_jpeg_quality("RETRAIN_JPEG_QUALITY", "50,95")
RETRAIN_JPEG_P = env_share("RETRAIN_JPEG_P", "0.5")
TRAINING_DEVICE = env("TRAINING_DEVICE", "auto")
TRAINING_STALE_AFTER = env_int("TRAINING_STALE_AFTER", 7200)
# Training images the int8 artefact is calibrated on when a model version is published.
FAST_PATH_CALIBRATION_IMAGES = env_int("FAST_PATH_CALIBRATION_IMAGES", 1024)
# Where no training data is at hand: the images shipped for that (classifier/checkset/README.md).
FAST_PATH_CHECKSET = Path(env("FAST_PATH_CHECKSET", str(BASE_DIR / "classifier" / "checkset")))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"no_4xx_traceback": {"()": "skinweb.log_filters.NoTracebackBelow500"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["no_4xx_traceback"]}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    # Django's own configuration adds a second console handler under DEBUG: every line came twice.
    "loggers": {"django": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO"), "propagate": False}},
}
