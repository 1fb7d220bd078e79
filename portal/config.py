"""The portal's settings: one object, every setting declared once with its type, default and meaning.

Values come, in rising order of precedence, from the defaults below, an optional TOML file named by
``PORTAL_CONFIG``, and ``PORTAL_*`` environment variables (complex values as JSON). The defaults run the
embedded demo. ``docs/settings.md`` is generated from the descriptions below
(``scripts/settings-doc``); ``tests/operations/test_docs.py`` keeps the two in step.
"""

from __future__ import annotations

import os
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class AssuranceLevel(StrEnum):
    """eIDAS levels of assurance, in rising order."""

    LOW = "low"
    SUBSTANTIAL = "substantial"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return list(AssuranceLevel).index(self)

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, AssuranceLevel):
            return NotImplemented
        return self.rank >= other.rank

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, AssuranceLevel):
            return NotImplemented
        return self.rank < other.rank


#: acr values common to eIDAS brokers, TARA and REFEDS, so a provider needs an ``acr_map`` only for others.
DEFAULT_ACR_MAP: dict[str, AssuranceLevel] = {
    "http://eidas.europa.eu/LoA/low": AssuranceLevel.LOW,
    "http://eidas.europa.eu/LoA/substantial": AssuranceLevel.SUBSTANTIAL,
    "http://eidas.europa.eu/LoA/high": AssuranceLevel.HIGH,
    "low": AssuranceLevel.LOW,
    "substantial": AssuranceLevel.SUBSTANTIAL,
    "high": AssuranceLevel.HIGH,
    "https://refeds.org/assurance/IAP/low": AssuranceLevel.LOW,
    "https://refeds.org/assurance/IAP/medium": AssuranceLevel.SUBSTANTIAL,
    "https://refeds.org/assurance/IAP/high": AssuranceLevel.HIGH,
}

#: The portal's attribute names and the claims they come from, unless a provider's ``claim_map`` says otherwise.
DEFAULT_CLAIM_MAP: dict[str, str] = {
    "given_name": "given_name",
    "family_name": "family_name",
    "name": "name",
    "email": "email",
    "email_verified": "email_verified",
    "birthdate": "birthdate",
    "person_identifier": "person_identifier",
    "external_affiliation": "voperson_external_affiliation",
    "entitlement": "eduperson_entitlement",
}


class OIDCProvider(BaseModel):
    """One OpenID Connect provider users may log in with."""

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description="Short name used in URLs and stored with each identity; never change it once users have logged in.",
    )
    label: str = Field(description="What the login page shows.")
    discovery_url: str = Field(description="The provider's ``/.well-known/openid-configuration`` URL.")
    client_id: str = Field(description="The portal's client id at the provider.")
    client_secret: str | None = Field(
        default=None,
        description="Read from ``PORTAL_OIDC_<NAME>_CLIENT_SECRET`` when not given here; keep secrets out of files.",
    )
    scopes: str = Field(default="openid email profile", description="Scopes requested at login.")
    request_acr: str | None = Field(
        default=None,
        description=(
            "``acr_values`` to request (for example ``http://eidas.europa.eu/LoA/substantial``); none by default."
        ),
    )
    acr_map: dict[str, AssuranceLevel] = Field(
        default_factory=dict,
        description=(
            "Extra acr values of this provider and their level; merged over the common eIDAS/TARA/REFEDS values."
        ),
    )
    default_acr: AssuranceLevel = Field(
        default=AssuranceLevel.LOW, description="Level assumed when the ID token carries no acr claim."
    )
    min_acr: AssuranceLevel = Field(default=AssuranceLevel.LOW, description="Logins below this level are refused.")
    claim_map: dict[str, str] = Field(
        default_factory=dict, description="Portal attribute -> claim name, merged over the defaults."
    )
    authorize_url: str | None = Field(
        default=None,
        description="Authorization endpoint override, for providers whose discovery document is incomplete or wrong.",
    )
    token_url: str | None = Field(default=None, description="Token endpoint override (see ``authorize_url``).")
    jwks_uri: str | None = Field(default=None, description="JWKS (signing keys) URL override (see ``authorize_url``).")

    @model_validator(mode="after")
    def _secret_from_environment(self) -> OIDCProvider:
        if self.client_secret is None:
            env_name = f"PORTAL_OIDC_{self.name.upper().replace('-', '_')}_CLIENT_SECRET"
            self.client_secret = os.environ.get(env_name)
        return self

    def level_for(self, acr: str | None) -> AssuranceLevel | None:
        """The assurance level of an ``acr`` value, or None if this provider's mapping does not know it."""
        if acr is None or acr == "":
            return self.default_acr
        return {**DEFAULT_ACR_MAP, **self.acr_map}.get(acr)

    def claim(self, attribute: str) -> str:
        return {**DEFAULT_CLAIM_MAP, **self.claim_map}[attribute]


class SlurmClusterConfig(BaseModel):
    """A Slurm cluster whose accounts ``portal slurm sync`` manages and whose usage the portal charges."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="The cluster's ``ClusterName`` (lower case, as sacct prints it).",
    )
    site: str = Field(
        pattern=r"^[a-z0-9]{1,16}$", description="Code of the site whose allocations run on this cluster (``waw``)."
    )
    sacct: str = Field(default="sacct", description="The ``sacct`` program (a path, or a name looked up on PATH).")
    sacctmgr: str = Field(
        default="sacctmgr", description="The ``sacctmgr`` program (a path, or a name looked up on PATH)."
    )
    slurm_conf: str | None = Field(
        default=None, description="``SLURM_CONF`` for both programs, when not the host's default slurm.conf."
    )
    notebook_user: str = Field(
        default="",
        pattern=r"^([a-z_][a-z0-9_.-]{0,31})?$",
        description=(
            "The cluster login the JupyterHub submits notebook and Dask Gateway jobs as (hub users are portal "
            "identities, not Unix accounts): ``portal slurm sync`` makes it a user of every account it manages, so "
            "a notebook's job runs under its allocation's account. Empty: the hub does not run jobs here."
        ),
    )
    partitions: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'Partition per resource code (``{"h100": "gpu-h100"}``) for notebook and Dask jobs; resources not listed '
            "use the default partition."
        ),
    )


class NotebookProfile(BaseModel):
    """A size of notebook server users may start through the hub (``[[notebook_profiles]]`` in TOML)."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$",
        description="Short name sent in the spawn's ``user_options`` (``1x-h100``).",
    )
    label: str = Field(description="What the portal's start form shows.")
    gpus: int = Field(default=0, ge=0, description="GPUs of the server; 0 for a CPU-only server.")
    gpu_model: str | None = Field(
        default=None, description="The GPU model; must equal the allocation's resource ``gpu_model`` when ``gpus`` > 0."
    )
    cpus: int = Field(default=2, gt=0, description="CPU cores (the spawner's ``cpu_limit``).")
    memory_gb: int = Field(default=4, gt=0, description="Memory in GB (the spawner's ``mem_limit``).")

    @model_validator(mode="after")
    def _gpu_model_with_gpus(self) -> NotebookProfile:
        if self.gpus > 0 and not self.gpu_model:
            raise ValueError(f"notebook profile {self.name} has GPUs but no gpu_model")
        if self.gpus == 0 and self.gpu_model:
            raise ValueError(f"notebook profile {self.name} names a gpu_model but has no GPUs")
        return self


def _default_notebook_profiles() -> list[NotebookProfile]:
    return [
        NotebookProfile(name="cpu", label="CPU only: 2 cores, 4 GB", gpus=0, cpus=2, memory_gb=4),
        NotebookProfile(
            name="1x-h100", label="1 × H100, 8 cores, 64 GB", gpus=1, gpu_model="H100", cpus=8, memory_gb=64
        ),
        NotebookProfile(
            name="2x-h100", label="2 × H100, 16 cores, 128 GB", gpus=2, gpu_model="H100", cpus=16, memory_gb=128
        ),
        NotebookProfile(
            name="1x-h200", label="1 × H200, 8 cores, 96 GB", gpus=1, gpu_model="H200", cpus=8, memory_gb=96
        ),
    ]


#: Development stand-ins for the hub's secrets; production refuses them.
DEV_HUB_OAUTH_CLIENT_SECRET = "dev-hub-oauth-secret"  # noqa: S105
DEV_HUB_SPAWN_CHECK_TOKEN = "dev-hub-spawn-check-token"  # noqa: S105
DEV_HUB_API_TOKEN = "dev-hub-api-token"  # noqa: S105


#: Rate limits by kind of request (see ``portal/ratelimit.py`` for the routes each covers).
DEFAULT_RATE_LIMITS: dict[str, str] = {
    "login": "30 per minute",
    "api_auth_failures": "30 per minute",
    "oauth_client_auth_failures": "10 per minute",
    "invitations": "30 per hour",
    "join_codes": "10 per minute",
}

#: Settings that are secrets: production takes them from the environment only, and refuses placeholders.
SECRET_SETTINGS = (
    "secret_key",
    "metrics_token",
    "stripe_api_key",
    "stripe_webhook_secret",
    "smtp_password",
    "hub_oauth_client_secret",
    "hub_spawn_check_token",
    "hub_api_token",
)
#: Shortest secret key and metrics token production accepts.
MIN_SECRET_LENGTH = 32
#: What example files put where a secret belongs.
PLACEHOLDER = re.compile(r"change[-_ ]?me|replace[-_ ]?me", re.IGNORECASE)


class Settings(BaseSettings):
    """Every setting of the portal. Environment variables are ``PORTAL_`` + the upper-cased name."""

    model_config = SettingsConfigDict(env_prefix="PORTAL_", extra="ignore", validate_default=True)

    env: Literal["development", "test", "production"] = Field(
        default="development",
        description="``development`` (the demo), ``test`` or ``production``; production refuses insecure defaults.",
    )
    base_url: str = Field(
        default="http://127.0.0.1:5000",
        description=(
            "The public URL of the portal, used in e-mails and OIDC redirect URIs; ``https://`` makes cookies Secure."
        ),
    )
    instance_path: Path = Field(
        default=Path("instance"),
        description="Folder for the SQLite file, the generated development secret key and other local state.",
    )
    database_url: str = Field(
        default="",
        description=(
            "SQLAlchemy database URL (``postgresql+psycopg://portal@db/portal``); SQLite under the instance "
            "folder when empty."
        ),
    )
    secret_key: str | None = Field(
        default=None,
        description=(
            "Signs sessions and CSRF tokens; required in production, generated into ``instance/secret_key`` elsewhere."
        ),
    )
    oidc_providers: list[OIDCProvider] = Field(
        default_factory=list,
        description=(
            "OIDC providers offered on the login page (a JSON list in the environment, ``[[oidc_providers]]`` in TOML)."
        ),
    )
    trusted_proxies: int = Field(
        default=0,
        description="How many reverse proxies in front of the portal set ``X-Forwarded-*`` (0: none is trusted).",
    )
    mail_backend: Literal["log", "smtp"] = Field(
        default="log",
        description="``log`` writes outgoing e-mail to the log; ``smtp`` sends it through the SMTP server below.",
    )
    smtp_host: str = Field(
        default="127.0.0.1", description='SMTP server the portal sends e-mail through (with ``mail_backend = "smtp"``).'
    )
    smtp_port: int = Field(default=25, description="SMTP port.")
    smtp_username: str | None = Field(default=None, description="SMTP login, if the server needs one.")
    smtp_password: str | None = Field(default=None, description="SMTP password, if the server needs one.")
    smtp_starttls: bool = Field(default=False, description="Use STARTTLS on the SMTP connection.")
    mail_from: str = Field(
        default="Baltic AI Factory <noreply@factory.example.eu>", description="Sender address of the portal's e-mail."
    )
    invitation_ttl_hours: int = Field(default=168, gt=0, description="Hours an invitation link stays valid.")
    api_token_ttl_days: int = Field(
        default=90, gt=0, description="Days a personal API token stays valid unless its owner chooses otherwise."
    )
    serve_bind: str = Field(default="127.0.0.1:8000", description="Address ``portal serve`` (gunicorn) listens on.")
    serve_workers: int = Field(default=2, gt=0, description="gunicorn workers of ``portal serve``.")
    worker_interval_seconds: int = Field(
        default=60, gt=0, description="Seconds between two rounds of ``portal worker``."
    )
    stripe_api_key: str = Field(
        default="sk_test_devstripe",
        description="Stripe secret key (``sk_live_...``); the demo's stand-in accepts any ``sk_test_...``.",
    )
    stripe_webhook_secret: str = Field(
        default="whsec_devstripe",
        description=(
            "Signing secret of the portal's Stripe webhook endpoint ``/market/stripe/webhook`` (``whsec_...``)."
        ),
    )
    stripe_api_base: str = Field(
        default="",
        description=(
            "Another Stripe API address (the local stand-in, ``http://127.0.0.1:8420``); empty for Stripe itself."
        ),
    )
    seller_name: str = Field(default="Baltic AI Factory (demo)", description="The seller printed on invoices.")
    seller_address: str = Field(
        default="ul. Przykładowa 1, 00-001 Warszawa", description="The seller's address on invoices."
    )
    seller_country: str = Field(
        default="PL", description="The seller's country: decides domestic VAT and reverse charge."
    )
    seller_vat_number: str = Field(
        default="PL5260250274", description="The seller's EU VAT number; invoices are numbered per seller and year."
    )
    seller_above_oss_threshold: bool = Field(
        default=True,
        description=(
            "Whether the seller's cross-border sales to consumers in other EU member states exceed EUR 10,000 a "
            "year (Article 59c of the VAT Directive): then a private buyer there pays their own country's VAT, "
            "declared through the One-Stop Shop; otherwise the seller's own rate."
        ),
    )
    vies_check: bool = Field(
        default=False,
        description="Confirm customers' VAT numbers online with the EU's VIES service before a reverse-charge sale.",
    )
    vies_url: str = Field(
        default="https://ec.europa.eu/taxation_customs/vies/rest-api/check-vat-number",
        description="The VIES REST endpoint (the EU's; another one for a test stand-in).",
    )
    invoice_prefix: str = Field(default="BAIF", description="Prefix of invoice numbers (``BAIF-2026-000042``).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of the portal's loggers (DEBUG, INFO, WARNING, ERROR)."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description=(
            "``text`` (one readable line per record) or ``json`` (one JSON object per line with ``time``, ``level``, "
            "``logger``, ``message``, ``request_id``)."
        ),
    )
    metrics_token: str = Field(
        default="",
        description=(
            "Bearer token Prometheus sends to ``/metrics`` (portal and worker); empty: ``/metrics`` answers 404."
        ),
    )
    worker_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of ``portal worker``'s own ``/metrics`` (behind the same token); 0: none.",
    )
    languages: list[str] = Field(
        default_factory=lambda: ["en", "pl", "lt", "lv", "et"],
        description="Languages offered in the interface (codes of portal/translations); the first is the fallback "
        "where ``en`` is not among them.",
    )
    slurm_clusters: list[SlurmClusterConfig] = Field(
        default_factory=list,
        description=(
            "Slurm clusters kept in step with the allocations (a JSON list, ``[[slurm_clusters]]`` in TOML): name, "
            "site, ..."
        ),
    )
    hub_url: str = Field(
        default="http://127.0.0.1:8081", description="The JupyterHub's address (its REST API is under ``/hub/api``)."
    )
    hub_oauth_client_id: str = Field(
        default="jupyterhub", description="The hub's client id at the portal's OAuth2 server."
    )
    hub_oauth_client_secret: str = Field(
        default="",
        description=(
            "The hub's client secret at the portal's OAuth2 server. Outside production it defaults to a development"
            " stand-in; production refuses that stand-in, and while it is unset there the hub cannot log anyone in."
        ),
    )
    hub_oauth_redirect_uri: str = Field(
        default="http://127.0.0.1:8081/hub/oauth_callback",
        description="The only redirect URI the portal's OAuth2 server sends the hub's authorization codes to.",
    )
    hub_spawn_check_token: str = Field(
        default="",
        description=(
            "The bearer token the hub sends to ``POST /api/v1/hub/spawn-check`` (development stand-in outside "
            "production; production refuses the stand-in, and while it is unset there every spawn check is "
            "refused)."
        ),
    )
    hub_api_token: str = Field(
        default="",
        description=(
            "The portal's service token for the hub's REST API (starting, listing and stopping servers); as above."
        ),
    )
    notebook_profiles: list[NotebookProfile] = Field(
        default_factory=_default_notebook_profiles,
        description=(
            "Notebook server sizes (a JSON list, ``[[notebook_profiles]]`` in TOML): name, label, gpus, gpu_model, ..."
        ),
    )
    hub_slurm_cluster: str = Field(
        default="",
        description=(
            "Where the hub runs notebook servers: the name of a ``slurm_clusters`` entry (its servers are Slurm "
            "jobs, charged from sacct), or empty for the hub's own machine (the demo; charged by the portal's "
            "metering)."
        ),
    )
    hub_local_gpus: list[str] = Field(
        default_factory=list,
        description=(
            "Only without ``hub_slurm_cluster``: the GPU models the hub's own machine has, one entry per GPU "
            '(``["H100", "H100"]``); GPU profiles it cannot serve are shown as unavailable, saying why. The demo '
            "fills it from ``nvidia-smi``."
        ),
    )
    session_lifetime_hours: int = Field(
        default=12,
        gt=0,
        le=24 * 30,
        description="Hours a login lasts, however active its user: then the session ends and the user logs in again.",
    )
    rate_limit_storage_url: str = Field(
        default="memory://",
        description=(
            "Where rate-limit counters live: ``memory://`` (one process: the demo, tests) or a Redis URL, shared by"
            " every gunicorn worker (``redis://redis:6379/0``)."
        ),
    )
    rate_limits: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_RATE_LIMITS),
        description=(
            "Rate limits per kind of request (``login``, ``api_auth_failures``, ``oauth_client_auth_failures``, "
            "``invitations``, ``join_codes``), in Flask-Limiter's notation; given kinds replace the defaults."
        ),
    )
    database_connect_timeout_seconds: int = Field(
        default=5,
        gt=0,
        le=300,
        description=(
            "Seconds to wait for a PostgreSQL connection (and for a free one in the pool) before answering 503."
        ),
    )
    database_statement_timeout_seconds: int = Field(
        default=20,
        ge=0,
        le=3600,
        description=(
            "Longest a PostgreSQL statement may run before it is cancelled (0: no limit); below gunicorn's 30 s "
            "worker timeout, so that a hung database answers 503 instead of freezing the worker."
        ),
    )
    upload_quota_bytes: int = Field(
        default=200 * 1024 * 1024,
        gt=0,
        description=(
            "Bytes of PDFs one user may keep uploaded to applications (a replaced file no longer counts); an "
            "upload beyond it is refused, saying how much is used."
        ),
    )
    login_retention_days: int = Field(
        default=180,
        gt=0,
        description=(
            "Personal data (docs/personal-data.md): days a login record is kept (provider, subject, level of "
            "assurance and the attributes asserted, such as a person identifier or birth date); the worker's daily "
            "``enforce_retention_periods`` deletes older ones."
        ),
    )
    web_session_retention_days: int = Field(
        default=30, gt=0, description='Days an ended or expired browser session is kept (for "who was logged in when").'
    )
    oauth_retention_days: int = Field(
        default=7, gt=0, description="Days the hub's authorization codes and access tokens are kept after they expired."
    )
    notification_retention_days: int = Field(
        default=365, gt=0, description="Days a notification stays in the in-portal inbox (it was e-mailed too)."
    )
    progress_report_due_days: int = Field(
        default=30,
        ge=0,
        le=365,
        description=(
            "Days after the middle of an awarded allocation's period that its progress report is due; the worker "
            "asks the PI for it at the middle."
        ),
    )
    final_report_due_days: int = Field(
        default=60,
        ge=0,
        le=365,
        description=(
            "Days after an awarded allocation ends that its final report is due; the worker asks the PI for it at "
            "the end."
        ),
    )
    report_reminder_days: int = Field(
        default=7,
        ge=0,
        le=90,
        description=(
            "Days before a progress or final report is due that the PI is reminded (once); an overdue report is "
            "notified once more, and its call manager sees it on the call's page."
        ),
    )

    @field_validator("rate_limits")
    @classmethod
    def _known_rate_limits(cls, value: dict[str, str]) -> dict[str, str]:
        from limits import parse_many

        unknown = set(value) - set(DEFAULT_RATE_LIMITS)
        if unknown:
            raise ValueError(
                f"unknown rate limit(s) {', '.join(sorted(unknown))}; known: {', '.join(DEFAULT_RATE_LIMITS)}"
            )
        for kind, limit in value.items():
            try:
                parse_many(limit)
            except ValueError as exc:
                raise ValueError(f"rate limit {kind}: {limit!r} is not a limit such as '10 per minute'") from exc
        return {**DEFAULT_RATE_LIMITS, **value}

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("hub_url")
    @classmethod
    def _hub_url_no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("notebook_profiles")
    @classmethod
    def _unique_profile_names(cls, value: list[NotebookProfile]) -> list[NotebookProfile]:
        names = [p.name for p in value]
        if len(names) != len(set(names)):
            raise ValueError("notebook profile names must be unique")
        return value

    def notebook_profile(self, name: str) -> NotebookProfile | None:
        return next((p for p in self.notebook_profiles if p.name == name), None)

    @field_validator("slurm_clusters")
    @classmethod
    def _unique_cluster_names(cls, value: list[SlurmClusterConfig]) -> list[SlurmClusterConfig]:
        names = [c.name for c in value]
        if len(names) != len(set(names)):
            raise ValueError("Slurm cluster names must be unique")
        return value

    def slurm_cluster(self, name: str) -> SlurmClusterConfig | None:
        return next((c for c in self.slurm_clusters if c.name == name), None)

    @model_validator(mode="after")
    def _hub_cluster_is_configured(self) -> Settings:
        if self.hub_slurm_cluster:
            cluster = self.slurm_cluster(self.hub_slurm_cluster)
            if cluster is None:
                raise ValueError(f"hub_slurm_cluster {self.hub_slurm_cluster!r} is not one of slurm_clusters")
            if not cluster.notebook_user:
                raise ValueError(f"Slurm cluster {cluster.name} runs the hub's notebooks but has no notebook_user")
            if self.hub_local_gpus:
                raise ValueError("hub_local_gpus is for a hub without hub_slurm_cluster")
        return self

    @model_validator(mode="after")
    def _production_rules(self) -> Settings:
        if self.env == "production":
            problems = self._production_problems()
            if problems:
                raise ValueError("production refuses to start: " + "; ".join(problems))
        else:
            # Outside production the hub's secrets default to the development stand-ins (the demo's hub uses them).
            self.hub_oauth_client_secret = self.hub_oauth_client_secret or DEV_HUB_OAUTH_CLIENT_SECRET
            self.hub_spawn_check_token = self.hub_spawn_check_token or DEV_HUB_SPAWN_CHECK_TOKEN
            self.hub_api_token = self.hub_api_token or DEV_HUB_API_TOKEN
        names = [p.name for p in self.oidc_providers]
        if len(names) != len(set(names)):
            raise ValueError("OIDC provider names must be unique")
        return self

    def _production_problems(self) -> list[str]:
        """Every reason these settings must not serve a production portal, each saying what to do."""
        problems = []
        if not self.secret_key:
            problems.append("PORTAL_SECRET_KEY must be set in production")
        elif len(self.secret_key) < MIN_SECRET_LENGTH:
            problems.append(f"PORTAL_SECRET_KEY must be at least {MIN_SECRET_LENGTH} characters long")
        if self.metrics_token and len(self.metrics_token) < MIN_SECRET_LENGTH:
            problems.append(f"PORTAL_METRICS_TOKEN must be at least {MIN_SECRET_LENGTH} characters long (or empty)")
        if not self.base_url.startswith("https://"):
            problems.append("PORTAL_BASE_URL must be an https:// URL in production")
        if self.resolved_database_url.startswith("sqlite"):
            problems.append("PORTAL_DATABASE_URL must name a PostgreSQL database in production, not SQLite")
        if not self.oidc_providers:
            problems.append("PORTAL_OIDC_PROVIDERS is empty: nobody could log in")
        if self.stripe_api_key == "sk_test_devstripe" or self.stripe_webhook_secret == "whsec_devstripe":  # noqa: S105
            problems.append("PORTAL_STRIPE_API_KEY and PORTAL_STRIPE_WEBHOOK_SECRET must be set in production")
        hub_stand_in = {
            "PORTAL_HUB_OAUTH_CLIENT_SECRET": self.hub_oauth_client_secret == DEV_HUB_OAUTH_CLIENT_SECRET,
            "PORTAL_HUB_SPAWN_CHECK_TOKEN": self.hub_spawn_check_token == DEV_HUB_SPAWN_CHECK_TOKEN,
            "PORTAL_HUB_API_TOKEN": self.hub_api_token == DEV_HUB_API_TOKEN,
        }
        refused = [name for name, dev in hub_stand_in.items() if dev]
        if refused:
            problems.append(f"{', '.join(refused)} must be set to a secret of its own in production")
        secrets = {f"PORTAL_{name.upper()}": getattr(self, name) for name in SECRET_SETTINGS}
        secrets |= {
            f"PORTAL_OIDC_{p.name.upper().replace('-', '_')}_CLIENT_SECRET": p.client_secret
            for p in self.oidc_providers
        }
        placeholders = [name for name, value in secrets.items() if value and PLACEHOLDER.search(value)]
        if placeholders:
            problems.append(f"{', '.join(placeholders)} still hold the example file's placeholder: set real secrets")
        in_file = _secrets_in_config_file()
        if in_file:
            problems.append(
                f"{os.environ.get('PORTAL_CONFIG')} holds secrets ({', '.join(in_file)}): move them to the environment"
            )
        return problems

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.instance_path.resolve() / 'portal.db'}"

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")

    def provider(self, name: str) -> OIDCProvider | None:
        return next((p for p in self.oidc_providers if p.name == name), None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("PORTAL_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise ValueError(f"PORTAL_CONFIG names {config_file}, which is not a file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def _secrets_in_config_file() -> list[str]:
    """The secret settings the TOML file named by ``PORTAL_CONFIG`` gives (secrets belong in the environment)."""
    config_file = os.environ.get("PORTAL_CONFIG")
    if not config_file or not Path(config_file).is_file():
        return []
    with Path(config_file).open("rb") as handle:
        values = tomllib.load(handle)
    found = [name for name in SECRET_SETTINGS if values.get(name)]
    for provider in values.get("oidc_providers") or []:
        if isinstance(provider, dict) and provider.get("client_secret"):
            found.append(f"oidc_providers[{provider.get('name', '?')}].client_secret")
    return found


def load_settings(**overrides: Any) -> Settings:
    """Settings from the file and environment, with explicit overrides (tests, the demo) winning."""
    return Settings(**overrides)
