"""``docker-compose.yml`` checked without a Docker engine: what it runs, what it sets, what it exposes.

No Docker engine runs on the development machines, so these tests check what can be checked from the files:
the compose file parses with ``.env.example``, every service's command is a real ``portal`` or hub command,
every ``PORTAL_*`` variable is a documented setting and together they make valid production settings, only
the proxy listens on the host, the Keycloak realm holds the redirect URI the portal really uses, and the hub
image's pins satisfy the project's ``hub`` extra. The end-to-end tests run the same topology as processes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from flask import url_for
from packaging.requirements import Requirement

from portal import create_app
from portal.cli import main
from portal.config import DEFAULT_ACR_MAP, Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
REALM = REPO / "deploy" / "keycloak" / "realm-baltic-ai-factory.json"
PORTAL_SERVICES = ("migrate", "portal", "worker")
STAGING = {"stripe", "mailpit", "keycloak-demo-users"}
ONE_SHOT = {"migrate", "keycloak-demo-users"}

VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def example_env() -> dict[str, str]:
    """``.env.example`` as compose reads it (KEY=VALUE lines; comments and blank lines skipped)."""
    values = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values


def operator_env() -> dict[str, str]:
    """``.env`` as an operator writes it from ``.env.example``: every ``change-me`` replaced by a secret of its own
    (what the file's first line asks; ``openssl rand -base64 33`` gives 44 characters). Production refuses the
    example as it is (see the test below), so the settings tests use this."""
    return {
        key: value.replace("change-me", base64.b64encode(hashlib.sha256(key.encode()).digest()[:33]).decode())
        for key, value in example_env().items()
    }


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``; an unset required variable fails."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        if op in (":-", "-"):
            return value if value not in (None, "") else arg
        if op in (":?", "?") and not value:
            raise AssertionError(f"{name} is required ({arg}) but .env.example does not set it")
        assert value is not None, f"${{{name}}} is used but .env.example does not set it and it has no default"
        return value

    return VARIABLE.sub(replace, text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), operator_env()))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def test_the_compose_file_parses_with_the_example_env_and_runs_the_whole_topology(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "proxy", "migrate", "portal", "worker", "db", "redis", "keycloak", "hub", "backup", *STAGING
    }  # fmt: skip
    assert compose["services"]["db"]["image"].startswith("postgres:")
    assert compose["services"]["keycloak"]["image"].startswith("quay.io/keycloak/keycloak:")
    assert compose["services"]["portal"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_stripe_stand_in_and_the_smtp_catcher_run_only_in_staging(compose: dict[str, Any]) -> None:
    profiled = {name: s.get("profiles") for name, s in compose["services"].items() if s.get("profiles")}
    assert profiled == {name: ["staging"] for name in STAGING}
    assert "standin" not in compose["services"]["portal"]["build"].get("target", "")


def test_only_the_proxy_listens_on_the_host_and_staging_stand_ins_only_on_loopback(compose: dict[str, Any]) -> None:
    published = {name: s["ports"] for name, s in compose["services"].items() if s.get("ports")}
    assert sorted(published["proxy"]) == ["443:443", "443:443/udp", "80:80"]
    for name in set(published) - {"proxy"}:
        assert name in STAGING, f"{name} publishes ports in production"
        assert all(port.startswith("127.0.0.1:") for port in published[name]), name


def test_every_long_running_service_has_a_healthcheck_and_restarts(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
            continue
        assert service["healthcheck"]["test"], name
        assert service["restart"] == "unless-stopped", name


def test_named_volumes_are_declared_and_bind_mounts_name_files_of_the_repository(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO / source).is_file(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in declared, f"{name} uses volume {source}, which is not declared"
                used.add(source)
    assert used == declared
    assert "postgres-data" in used and "hub-data" in used


def resolve_portal_command(argv: list[str]) -> click.Command:
    """Walks ``portal.cli.main`` as click would for ``argv`` and parses the options of the command found."""
    assert argv[0] == "portal", argv
    command: click.Command = main
    args = list(argv[1:])
    context = click.Context(main, info_name="portal")
    while isinstance(command, click.Group):
        name = args.pop(0)
        found = command.get_command(context, name)  # the lazy groups (portal/cli.py) are imported here
        assert found is not None, f"`portal` has no command {' '.join(argv[1:])!r}"
        context = click.Context(found, info_name=name, parent=context)
        command = found
    command.parse_args(context, args)  # unknown options or bad values raise click.UsageError
    return command


def test_portal_worker_and_migrate_run_real_portal_commands(compose: dict[str, Any]) -> None:
    commands = {name: compose["services"][name]["command"] for name in PORTAL_SERVICES}
    assert commands == {
        "migrate": ["portal", "db", "upgrade"],
        "portal": ["portal", "serve", "--bind", "0.0.0.0:8000"],
        "worker": ["portal", "worker"],
    }
    for argv in commands.values():
        resolve_portal_command(argv)
    with pytest.raises(click.UsageError):
        resolve_portal_command(["portal", "serve", "--port", "8000"])  # the resolver does refuse what is wrong
    for documented in (["portal", "db", "downgrade", "--revision", "0015", "--yes"], ["portal", "usage", "pull-sacct",
                       "--cluster", "c", "--since", "2026-11-02T06:00:00"]):  # fmt: skip
        resolve_portal_command(documented)  # the operator guide's commands, including the lazily imported groups
    stripe = compose["services"]["stripe"]["command"]
    assert stripe[:3] == ["python", "-m", "portal_standin.devstripe"]
    from portal_standin.devstripe.server import main as devstripe_main

    with pytest.raises(SystemExit) as parsed:
        devstripe_main([*stripe[3:], "--help"])
    assert parsed.value.code == 0


def documented_hub_variables() -> set[str]:
    docstring = (REPO / "hub_config" / "jupyterhub_config.py").read_text().split('"""')[1]
    return set(re.findall(r"^([A-Z][A-Z0-9_]+)", docstring, re.MULTILINE)) | set(
        re.findall(r"^[A-Z_]+, ([A-Z][A-Z0-9_]+)", docstring, re.MULTILINE)
    )


def test_the_hub_runs_jupyterhub_with_the_repositorys_config_and_documented_variables(compose: dict[str, Any]) -> None:
    hub = compose["services"]["hub"]
    assert hub["command"] == ["jupyterhub", "-f", "/srv/hub_config/jupyterhub_config.py"]
    dockerfile = (REPO / hub["build"]["dockerfile"]).read_text()
    assert "COPY hub_config /srv/hub_config" in dockerfile
    assert set(environment(hub)) <= documented_hub_variables(), set(environment(hub)) - documented_hub_variables()
    gpus = hub["deploy"]["resources"]["reservations"]["devices"]
    assert gpus == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def portal_variables(compose: dict[str, Any]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for name in PORTAL_SERVICES:
        merged.update(environment(compose["services"][name]))
    return merged


def test_every_portal_variable_is_a_documented_setting(compose: dict[str, Any]) -> None:
    reference = (REPO / "docs" / "settings.md").read_text()
    providers = json.loads(portal_variables(compose)["PORTAL_OIDC_PROVIDERS"])
    secrets = {f"PORTAL_OIDC_{p['name'].upper()}_CLIENT_SECRET" for p in providers}
    names = {n for n in portal_variables(compose) if n.startswith("PORTAL_")}
    names |= {n for n in example_env() if n.startswith("PORTAL_")}
    for name in names - secrets - {"PORTAL_CONFIG"}:
        assert name.removeprefix("PORTAL_").lower() in Settings.model_fields, f"{name} is no setting"
        assert f"`{name}`" in reference, f"{name} is not in docs/settings.md"
    for key in tomllib.loads((REPO / "deploy" / "portal.toml").read_text()):
        assert key in Settings.model_fields, f"deploy/portal.toml sets {key}, which is no setting"


@pytest.fixture
def compose_settings(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The portal's settings exactly as the portal container gets them (production rules included)."""
    for key, value in portal_variables(compose).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PORTAL_CONFIG", str(REPO / "deploy" / "portal.toml"))
    monkeypatch.setenv("PORTAL_INSTANCE_PATH", str(tmp_path))
    return Settings()


def test_the_compose_environment_makes_valid_production_settings(compose_settings: Settings) -> None:
    assert compose_settings.env == "production"
    assert compose_settings.base_url == "https://portal.factory.example.eu"
    assert compose_settings.log_format == "json" and compose_settings.metrics_token
    assert [p.name for p in compose_settings.oidc_providers] == ["factory"]
    assert compose_settings.oidc_providers[0].client_secret == operator_env()["KEYCLOAK_PORTAL_CLIENT_SECRET"]
    assert compose_settings.resolved_database_url.startswith("postgresql+psycopg://portal:")
    assert compose_settings.notebook_profile("1x-h100") is not None  # from deploy/portal.toml


def test_production_refuses_the_example_env_until_its_placeholders_are_replaced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    as_shipped = yaml.safe_load(interpolate(COMPOSE.read_text(), example_env()))
    for key, value in portal_variables(as_shipped).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PORTAL_CONFIG", str(REPO / "deploy" / "portal.toml"))
    monkeypatch.setenv("PORTAL_INSTANCE_PATH", str(tmp_path))
    with pytest.raises(ValueError, match="production refuses to start") as refused:
        Settings()
    message = str(refused.value)
    for name in ("PORTAL_SECRET_KEY", "PORTAL_HUB_API_TOKEN", "PORTAL_OIDC_FACTORY_CLIENT_SECRET"):
        assert name in message.split("still hold the example file's placeholder")[0].rsplit(";", 1)[-1], name


def test_the_portals_gunicorn_workers_share_rate_limit_counters_in_redis(
    compose: dict[str, Any], compose_settings: Settings
) -> None:
    assert compose_settings.rate_limit_storage_url == "redis://redis:6379/0"
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:") and "ports" not in redis
    assert compose["services"]["portal"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_hub_and_the_portal_share_their_secrets_and_addresses(
    compose: dict[str, Any], compose_settings: Settings
) -> None:
    hub = environment(compose["services"]["hub"])
    assert hub["PORTAL_URL"] == compose_settings.base_url
    # The hub reads what it shares with the portal under the portal's own names (hub_config/portal_env.py).
    for name in ("hub_oauth_client_id", "hub_oauth_client_secret", "hub_oauth_redirect_uri", "hub_spawn_check_token",
                 "hub_api_token"):  # fmt: skip
        assert hub[f"PORTAL_{name.upper()}"] == getattr(compose_settings, name), name
    # The hub sends users back to {HUB_PUBLIC_URL}/hub/oauth_callback: the one URI the portal allows.
    assert compose_settings.hub_oauth_redirect_uri == f"{hub['HUB_PUBLIC_URL']}/hub/oauth_callback"
    # The portal reaches the hub's proxy on the compose network.
    address = urlsplit(compose_settings.hub_url)
    assert (address.hostname, str(address.port)) == ("hub", hub["HUB_PORT"]) and hub["HUB_IP"] == "0.0.0.0"  # noqa: S104


def realm(env: dict[str, str]) -> dict[str, Any]:
    """The realm export with Keycloak's ``${VAR}`` placeholders filled from the keycloak service's environment."""
    return json.loads(interpolate(REALM.read_text(), env))


def test_the_realm_holds_the_portals_confidential_client_with_its_real_callback(
    compose: dict[str, Any], compose_settings: Settings
) -> None:
    keycloak = environment(compose["services"]["keycloak"])
    placeholders = set(VARIABLE.findall(REALM.read_text()))
    assert {name for name, _op, _arg in placeholders} <= set(keycloak), "a placeholder Keycloak cannot fill"
    exported = realm(keycloak)
    provider = compose_settings.oidc_providers[0]
    assert provider.discovery_url == (
        f"https://{example_env()['PUBLIC_KEYCLOAK_HOST']}/realms/{exported['realm']}/.well-known/openid-configuration"
    )
    clients = {c["clientId"]: c for c in exported["clients"]}
    assert set(clients) == {provider.client_id}  # the hub logs in through the portal, not through Keycloak
    client = clients[provider.client_id]
    assert client["publicClient"] is False and client["standardFlowEnabled"] is True
    assert client["directAccessGrantsEnabled"] is False and client["implicitFlowEnabled"] is False
    assert client["secret"] == provider.client_secret
    app = create_app(compose_settings.model_copy(update={"database_url": "sqlite://"}))
    with app.test_request_context():
        callback = compose_settings.base_url + url_for("identity.callback", name=provider.name)
    assert client["redirectUris"] == [callback]


#: The client scopes Keycloak 26 creates in a new realm, when (and only when) the import declares none.
KEYCLOAK_BUILT_IN_SCOPES = {
    "acr", "address", "basic", "email", "microprofile-jwt", "offline_access", "organization", "phone", "profile",
    "role_list", "roles", "saml_organization", "web-origins",
}  # fmt: skip


def test_the_realm_is_an_import_keycloak_accepts_and_every_scope_its_client_names_exists() -> None:
    exported = json.loads(REALM.read_text())
    assert exported["realm"] == "baltic-ai-factory" and exported["enabled"] is True
    assert "users" not in exported  # demo users are made only by the staging profile's keycloak-demo-users
    # RealmManager.importRealm creates the built-in scopes (``basic`` carries ``sub``, ``profile`` and ``email``
    # the name and address the portal reads) only if the file has no ``clientScopes``; a client naming a missing
    # scope is imported without it and a warning. So the file declares none and names only built-ins.
    declared = {scope["name"] for scope in exported.get("clientScopes") or []}
    existing = declared if "clientScopes" in exported else KEYCLOAK_BUILT_IN_SCOPES
    for client in exported["clients"]:
        named = set(client["defaultClientScopes"]) | set(client["optionalClientScopes"])
        assert named <= existing, f"client {client['clientId']} names missing scopes {named - existing}"
        assert {"basic", "profile", "email"} <= set(client["defaultClientScopes"]), client["clientId"]
        for mapper in client["protocolMappers"]:
            assert mapper["protocol"] == "openid-connect" and mapper["protocolMapper"].startswith("oidc-")
            assert mapper["config"]["id.token.claim"] == "true", mapper["name"]


def test_the_realm_maps_upstream_logins_to_eidas_levels_the_portal_understands() -> None:
    exported = json.loads(REALM.read_text())
    client = exported["clients"][0]
    assert "acr" not in client["defaultClientScopes"]  # Keycloak's own acr ("0"/"1") would mean nothing here
    emitted = {m["config"]["claim.name"]: m["config"]["user.attribute"] for m in client["protocolMappers"]}
    assert emitted["acr"] == "eidas_loa"
    assert {"voperson_external_affiliation", "eduperson_entitlement", "person_identifier"} <= set(emitted)
    providers = {p["alias"] for p in exported["identityProviders"]}
    assert providers == {"eidas", "academic"}
    level_mappers = [m for m in exported["identityProviderMappers"] if "eidas_loa" in m["config"].values()]
    assert {m["identityProviderAlias"] for m in level_mappers} == providers  # every login gets a level
    for mapper in level_mappers:
        if mapper["identityProviderMapper"] == "hardcoded-attribute-idp-mapper":
            assert mapper["config"]["attribute.value"] in DEFAULT_ACR_MAP
        else:
            assert mapper["config"]["claim"] == "acr"  # the eIDAS broker's own LoA URI, passed on as it is


def test_the_hub_image_pins_satisfy_the_projects_hub_extra() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extra = [Requirement(line) for line in pyproject["project"]["optional-dependencies"]["hub"]]
    pins = {}
    for line in (REPO / "deploy" / "hub-requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            pins[requirement.name.lower()] = requirement
    for wanted in extra:
        pinned = pins.get(wanted.name.lower())
        assert pinned is not None, f"the hub image does not install {wanted.name}"
        version = str(pinned.specifier).removeprefix("==")
        assert wanted.specifier.contains(version), f"{pinned} does not satisfy the hub extra's {wanted}"
        assert wanted.extras <= pinned.extras, f"{pinned} lacks the extras of {wanted}"
        try:
            installed = metadata.version(wanted.name)
        except metadata.PackageNotFoundError:
            continue
        assert installed == version, f"the tests run {wanted.name} {installed}, the image pins {version}"
    proxy = json.loads((REPO / "package.json").read_text())["dependencies"]["configurable-http-proxy"]
    image = re.search(r"configurable-http-proxy@(\d+)\.(\d+)\.(\d+)", (REPO / "deploy" / "hub.Dockerfile").read_text())
    assert image is not None
    major, minor, _patch = map(int, proxy.lstrip("^").split("."))
    assert int(image[1]) == major and int(image[2]) >= minor, f"the image's proxy {image[0]} is not {proxy}"


def test_images_use_the_python_the_project_requires() -> None:
    required = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    for dockerfile in ("portal.Dockerfile", "hub.Dockerfile"):
        base = re.search(r"^FROM python:(\d+\.\d+)", (REPO / "deploy" / dockerfile).read_text(), re.MULTILINE)
        assert base is not None, dockerfile
        assert Requirement(f"python{required}").specifier.contains(base[1] + ".0"), dockerfile


class _ComposeLoader(yaml.SafeLoader):
    """Compose's YAML: ``!reset`` (drop what the base file set) read as an empty value."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def test_the_factory_override_runs_the_hubs_servers_as_slurm_jobs_of_the_portals_cluster() -> None:
    text = interpolate((REPO / "deploy" / "compose.slurm.yml").read_text(), example_env())
    override = yaml.load(text, Loader=_ComposeLoader)  # noqa: S506 - a SafeLoader that also knows !reset
    hub = override["services"]["hub"]
    env = environment(hub)
    assert env["HUB_SPAWNER"] == "slurm"
    assert set(env) <= documented_hub_variables(), set(env) - documented_hub_variables()
    # the portal knows the hub's cluster by the same name, in every portal container
    for name in PORTAL_SERVICES:
        assert environment(override["services"][name])["PORTAL_HUB_SLURM_CLUSTER"] == env["PORTAL_HUB_SLURM_CLUSTER"]
    # the submit host's Slurm configuration and munge socket, and the homes the compute nodes share
    mounts = {m.split(":")[1] for m in hub["volumes"]}
    assert {"/etc/slurm", "/run/munge", env["HUB_SLURM_HOME_ROOT"], "/srv/jupyterhub"} <= mounts
    assert env["SLURM_CONF"].startswith("/etc/slurm/")
    assert hub["deploy"] is None  # no GPU for the hub's own container: servers run on the compute nodes
    assert "slurm-client" in (REPO / "deploy" / "hub.Dockerfile").read_text()
    # deploy/portal.toml's example cluster says which login the hub submits as
    assert f'notebook_user = "{env["HUB_SLURM_SUBMIT_USER"]}"' in (REPO / "deploy" / "portal.toml").read_text()


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves PATH out of the build context: the last matching pattern wins, ``!`` re-includes,
    a pattern matches the path or a folder above it (``**/`` at any depth)."""
    import fnmatch

    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        forms = [pattern, pattern.removeprefix("**/")] if pattern.startswith("**/") else [pattern]
        for candidate in candidates:
            names = [candidate, candidate.rsplit("/", 1)[-1]] if pattern.startswith("**/") else [candidate]
            if any(fnmatch.fnmatchcase(name, form) for name in names for form in forms):
                ignored = not negated
                break
    return ignored


def test_the_build_context_leaves_out_local_state_and_secrets_but_not_what_the_images_copy() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for local in (".git", ".venv", "node_modules", "instance", "instance/portal.db", "instance/secret_key", ".env",
                  ".env.production", ".pytest_cache", ".ruff_cache", ".hypothesis", "test-artifacts",
                  "portal/__pycache__/cli.cpython-311.pyc", "baltic_ai_factory_portal.egg-info"):  # fmt: skip
        assert dockerignored(local, patterns), f"{local} goes into the build context"
    assert not dockerignored(".env.example", patterns)
    copied = set()
    for dockerfile in ("portal.Dockerfile", "hub.Dockerfile"):
        for line in (REPO / "deploy" / dockerfile).read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                copied |= set(line.split()[1:-1])
    assert {"pyproject.toml", "README.md", "portal", "static", "hub_config", "deploy/hub-requirements.txt"} <= copied
    for source in copied:
        assert (REPO / source).exists(), source
        assert not dockerignored(source, patterns), f".dockerignore leaves out {source}, which an image copies"
    for source in ("portal/cli.py", "portal/migrations/versions/0001_foundation.py", "hub_config/jupyterhub_config.py"):
        assert not dockerignored(source, patterns), source


def dockerfile_stages(text: str) -> list[tuple[str, str]]:
    """(FROM line, the stage's instructions) per build stage."""
    stages = re.split(r"^(FROM .+)$", text, flags=re.MULTILINE)[1:]
    return list(zip(stages[0::2], stages[1::2], strict=True))


def test_the_hub_image_has_git_and_a_node_new_enough_for_the_proxy_not_debians() -> None:
    text = (REPO / "deploy" / "hub.Dockerfile").read_text()
    stages = dockerfile_stages(text)
    (node_from, node_stage), (final_from, final_stage) = stages[0], stages[-1]
    node = re.fullmatch(r"FROM node:(\d+)-(\w+)-slim AS (\w+)", node_from)
    assert node is not None, node_from
    proxy_needs = json.loads((REPO / "node_modules" / "configurable-http-proxy" / "package.json").read_text())
    assert proxy_needs["engines"]["node"] == ">= 20"
    assert int(node[1]) >= 20, "configurable-http-proxy 5 needs Node >= 20"
    assert final_from.startswith("FROM python:") and final_from.endswith(f"-{node[2]}")  # the same Debian (glibc)
    assert "npm install -g configurable-http-proxy@" in node_stage
    installed = re.search(r"apt-get install -y --no-install-recommends ([^\\\n&]+)", final_stage)
    assert installed is not None
    packages = installed[1].split()
    assert "git" in packages, "course materials are cloned (hub_config/course_materials.py)"
    assert "nodejs" not in packages and "npm" not in packages  # Debian bookworm's nodejs is 18
    assert f"COPY --from={node[3]} /usr/local/bin/node /usr/local/bin/node" in final_stage
    assert f"COPY --from={node[3]} /usr/local/lib/node_modules/configurable-http-proxy " in final_stage
    assert "configurable-http-proxy --version" in final_stage  # the build fails if the copied proxy cannot run


def size_in_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG])", str(value)).groups()
    return int(float(number) * 1024 ** {"K": 1, "M": 2, "G": 3}[unit])


def test_every_service_rotates_its_logs_and_has_resource_limits(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["logging"] == {"driver": "json-file", "options": {"max-size": "20m", "max-file": "5"}}, name
        limits = service["deploy"]["resources"]["limits"]
        assert 64 * 1024**2 <= size_in_bytes(limits["memory"]) <= 64 * 1024**3, (name, limits)
        if name == "hub":  # its notebook servers live inside it; Docker refuses a CPU limit above the host's
            assert "cpus" not in limits
        else:
            assert 0 < float(limits["cpus"]) <= 2, (name, limits)
    # the defaults of the ones an operator sizes to the host, and that they are overridable from .env
    text = COMPOSE.read_text()
    sized = ("LIMIT_PORTAL_CPUS", "LIMIT_PORTAL_MEMORY", "LIMIT_DB_CPUS", "LIMIT_DB_MEMORY", "LIMIT_HUB_MEMORY")
    for variable in sized:
        assert f"${{{variable}:-" in text, variable
        assert f"`{variable}`" in (REPO / "docs" / "deployment.md").read_text(), (
            f"{variable} is not in docs/deployment.md"
        )


def test_keycloak_imports_the_realm_once_and_the_readme_says_so(compose: dict[str, Any]) -> None:
    keycloak = compose["services"]["keycloak"]
    assert keycloak["command"] == ["start", "--import-realm"]
    text = COMPOSE.read_text()
    comment = text[: text.index('command: ["start", "--import-realm"]')].rsplit("keycloak:", 1)[1]
    assert "later edits of the file are" in comment and "ignored" in comment
    deployment = (REPO / "docs" / "deployment.md").read_text().split("## Deployment (docker compose)", 1)[1]
    deployment = deployment.split("\n## ", 1)[0]
    assert "**Keycloak's realm is imported once.**" in deployment
    assert "partialImport" in deployment  # how to apply an edit to the running realm


def test_the_portals_metrics_folder_is_a_tmpfs_and_portal_serve_makes_one_when_unset(compose: dict[str, Any]) -> None:
    portal = compose["services"]["portal"]
    assert environment(portal)["PROMETHEUS_MULTIPROC_DIR"] in portal["tmpfs"]
    source = (REPO / "portal" / "cli.py").read_text()
    serve = source[source.index("def serve(") :].split("\n@main.command", 1)[0]
    assert 'os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(' in serve  # run by test_config_and_cli.py
