#!/usr/bin/env python3
"""A real OpenID Connect provider on loopback, for kOS node's OIDC tests.

This is `django-oidc-provider` (PyPI, a production Django app), not a mock: the test only
writes a minimal Django project around it. Given an empty directory it

  0. binds 127.0.0.1:<port> (port 0 by default: the kernel picks a free one, which is
     then the port everything below uses and the ready line reports);

  1. writes a Django project into the directory (settings, urls, one hook module), with its
     sqlite database in the same directory;
  2. runs `migrate` and `creatersakey` (an RS256 signing key, served in the JWKS);
  3. creates two users, `alice` (in the group `kos-admins`) and `bob` (in no group), and one
     confidential client with a client secret, for the resource-owner password grant
     (`OIDC_GRANT_TYPE_PASSWORD_ENABLE`), whose ID tokens are RS256 JWTs carrying a `roles`
     claim (the user's group names, added by `OIDC_IDTOKEN_PROCESSING_HOOK`);
  4. serves on that socket (Django's threaded development server, no reloader), checks
     its own discovery document and JWKS over HTTP (200, no redirect, issuer as configured),
     and prints ONE JSON line on stdout:

       {"issuer", "discovery_url", "jwks_uri", "token_endpoint", "client_id",
        "client_secret", "username", "password", "viewer_username", "viewer_password"}

The issuer is http://127.0.0.1:<port>/openid (the provider is mounted under /openid, as in the
package's documentation); discovery is <issuer>/.well-known/openid-configuration.

Usage: provider.py --dir DIR [--port PORT] [--exit-on-stdin-eof]

With --exit-on-stdin-eof the provider exits when its stdin closes, so it does not outlive a
test process that dies without killing it. Everything but the JSON line goes to stderr.
Requires Python 3 with `django-oidc-provider` and a Django it supports (.ci/run installs
them); exits 2 with a message on stderr when they are missing.
"""

import argparse
import json
import os
import secrets
import sys
import threading
import urllib.error
import urllib.request

MOUNT = "openid"
CLIENT_ID = "kos-node"
ADMIN_GROUP = "kos-admins"

SETTINGS = """\
import os
BASE_DIR = {base_dir!r}
SECRET_KEY = {secret_key!r}
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "oidc_provider",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "kosoidc.urls"
TEMPLATES = [
    {{
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {{"context_processors": ["django.contrib.auth.context_processors.auth"]}},
    }}
]
DATABASES = {{
    "default": {{
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(BASE_DIR, "oidc.sqlite3"),
    }}
}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
LOGGING = {{
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {{"stderr": {{"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}}}},
    "loggers": {{
        "django.server": {{"handlers": ["stderr"], "level": "INFO", "propagate": False}},
        "oidc_provider": {{"handlers": ["stderr"], "level": "DEBUG", "propagate": False}},
    }},
}}
LOGIN_URL = "/accounts/login/"

# django-oidc-provider
SITE_URL = {site_url!r}
OIDC_GRANT_TYPE_PASSWORD_ENABLE = True
OIDC_IDTOKEN_PROCESSING_HOOK = "kosoidc.hooks.roles_claim"
OIDC_IDTOKEN_EXPIRE = 600
OIDC_TOKEN_EXPIRE = 600
"""

URLS = """\
from django.urls import include, path

urlpatterns = [
    path("{mount}/", include("oidc_provider.urls", namespace="oidc_provider")),
]
"""

HOOKS = """\
def roles_claim(id_token, user, token, request, **kwargs):
    \"\"\"OIDC_IDTOKEN_PROCESSING_HOOK: the user's group names as the `roles` claim.\"\"\"
    id_token["roles"] = sorted(user.groups.values_list("name", flat=True))
    return id_token
"""


def log(msg):
    print(f"provider.py: {msg}", file=sys.stderr, flush=True)


def fail(msg, code=1):
    log(msg)
    sys.exit(code)


def write_project(base_dir, site_url):
    pkg = os.path.join(base_dir, "kosoidc")
    os.makedirs(pkg, exist_ok=True)
    files = {
        "__init__.py": "",
        "settings.py": SETTINGS.format(
            base_dir=base_dir, secret_key=secrets.token_urlsafe(40), site_url=site_url
        ),
        "urls.py": URLS.format(mount=MOUNT),
        "hooks.py": HOOKS,
    }
    for name, text in files.items():
        with open(os.path.join(pkg, name), "w") as f:
            f.write(text)


def populate(client_secret):
    """Users, group and client. Returns (admin, viewer) as (username, password) pairs."""
    from django.contrib.auth.models import Group, User
    from oidc_provider.models import Client, ResponseType, RSAKey

    if RSAKey.objects.count() == 0:
        fail("creatersakey did not create a key")
    admins = Group.objects.create(name=ADMIN_GROUP)
    admin = ("alice", secrets.token_urlsafe(16))
    viewer = ("bob", secrets.token_urlsafe(16))
    alice = User.objects.create_user(admin[0], email="alice@example.test", password=admin[1])
    alice.groups.add(admins)
    User.objects.create_user(viewer[0], email="bob@example.test", password=viewer[1])

    client = Client.objects.create(
        name="kOS node",
        client_type="confidential",
        client_id=CLIENT_ID,
        client_secret=client_secret,
        jwt_alg="RS256",
        require_consent=False,
        _redirect_uris="http://127.0.0.1/callback",
        _scope="openid profile email",
    )
    client.response_types.add(ResponseType.objects.get(value="code"))
    return admin, viewer


def get_no_redirect(url):
    """GET url; refuse redirects (the node does). Returns (status, headers, body)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def self_check(issuer, discovery_url):
    """The discovery document and the JWKS, over HTTP, as a relying party sees them."""
    status, headers, body = get_no_redirect(discovery_url)
    if status != 200:
        fail(f"GET {discovery_url}: {status} {headers.get('Location', '')} {body[:200]!r}")
    doc = json.loads(body)
    if doc.get("issuer") != issuer:
        fail(f"discovery issuer {doc.get('issuer')!r} != {issuer!r}")
    if "RS256" not in doc.get("id_token_signing_alg_values_supported", []):
        fail(f"RS256 not in id_token_signing_alg_values_supported: {doc}")
    status, headers, body = get_no_redirect(doc["jwks_uri"])
    if status != 200:
        fail(f"GET {doc['jwks_uri']}: {status} {headers.get('Location', '')} {body[:200]!r}")
    keys = json.loads(body).get("keys", [])
    if not any(k.get("kty") == "RSA" and k.get("alg") == "RS256" and k.get("kid") for k in keys):
        fail(f"no RS256 key in the JWKS: {body[:500]!r}")
    return doc


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0, help="0 (default): any free port")
    ap.add_argument("--dir", required=True, help="an empty directory for the project and DB")
    ap.add_argument("--exit-on-stdin-eof", action="store_true")
    args = ap.parse_args()

    try:
        import django  # noqa: F401
        import oidc_provider  # noqa: F401
    except ImportError as e:
        fail(f"{e} (pip install django-oidc-provider and a Django it supports)", code=2)

    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    # Bind first, before announcing anything: the issuer URL needs the bound port, and a
    # taken port is an error here, not a hang later.
    try:
        httpd = ThreadedWSGIServer(("127.0.0.1", args.port), WSGIRequestHandler)
    except OSError as e:
        fail(f"cannot listen on 127.0.0.1:{args.port}: {e}")
    port = httpd.server_address[1]

    base_dir = os.path.abspath(args.dir)
    os.makedirs(base_dir, exist_ok=True)
    site_url = f"http://127.0.0.1:{port}"
    issuer = f"{site_url}/{MOUNT}"
    write_project(base_dir, site_url)
    sys.path.insert(0, base_dir)
    os.environ["DJANGO_SETTINGS_MODULE"] = "kosoidc.settings"

    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    call_command("creatersakey", stdout=sys.stderr)
    client_secret = secrets.token_urlsafe(24)
    admin, viewer = populate(client_secret)

    from django.core.servers.basehttp import get_internal_wsgi_application

    httpd.daemon_threads = True
    httpd.set_app(get_internal_wsgi_application())
    server = threading.Thread(target=httpd.serve_forever, daemon=True)
    server.start()

    doc = self_check(issuer, f"{issuer}/.well-known/openid-configuration")
    ready = {
        "issuer": issuer,
        "discovery_url": f"{issuer}/.well-known/openid-configuration",
        "jwks_uri": doc["jwks_uri"],
        "token_endpoint": doc["token_endpoint"],
        "client_id": CLIENT_ID,
        "client_secret": client_secret,
        "username": admin[0],
        "password": admin[1],
        "viewer_username": viewer[0],
        "viewer_password": viewer[1],
    }
    print(json.dumps(ready), flush=True)
    log(f"ready: issuer {issuer}")

    if args.exit_on_stdin_eof:
        threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    try:
        server.join()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
