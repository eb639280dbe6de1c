import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
#: The version is written once, in flask_pgtq/__init__.py.
VERSION = re.search(
    r'^__version__ = "([^"]+)"$',
    (HERE / "flask_pgtq" / "__init__.py").read_text(encoding="utf-8"),
    re.MULTILINE,
)[1]

setup(
    name="flask_pgtq",
    version=VERSION,
    description="A background task queue for Flask whose only infrastructure is PostgreSQL.",
    long_description=(HERE / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="BSD-3-Clause",
    packages=find_packages(include=["flask_pgtq", "flask_pgtq.*"]),
    package_data={
        "flask_pgtq": ["py.typed", "sql/*.sql", "sql/migrations/*.sql"],
        "flask_pgtq.dashboard": ["templates/pgtq_dashboard/*.html", "static/*"],
    },
    python_requires=">=3.11",
    install_requires=["Flask>=2.3", "blinker>=1.6"],
    extras_require={
        # The driver is an extra so that users pick the build: "binary" is a
        # wheel that needs no compiler or libpq; "c" builds against the system
        # libpq (what the psycopg2 authors recommend for production).
        "binary": ["psycopg2-binary>=2.9"],
        "c": ["psycopg2>=2.9"],
        # Periodic tasks (@q.periodic) parse cron expressions with croniter.
        "cron": ["croniter>=2"],
        # PGTQ_DEV_DATABASE: an embedded PostgreSQL for development (pgserver
        # ships the server's binaries in its wheels).
        "dev": ["pgserver>=0.1.4"],
        "prometheus": ["prometheus_client>=0.20"],
        # Tracing (flask_pgtq.tracing): active only once the app sets a
        # tracer provider (the SDK, or a distro), which the app installs.
        "otel": ["opentelemetry-api>=1.20"],
        # Style and typing checks (tox -e style, tox -e typing, .ci/run).
        # Ruff is pinned so that every run, and .pre-commit-config.yaml's
        # hook, reads the code alike.
        "lint": ["ruff==0.16.4", "mypy>=1.10", "types-psycopg2"],
        # SQLAlchemy is only needed to test pushes inside its transactions.
        "test": [
            "pytest>=7",
            "psycopg2-binary>=2.9",
            "prometheus_client>=0.20",
            # Spans across a real worker: tests/test_tracing.py.
            "opentelemetry-sdk>=1.20",
            # Drives Debian's /usr/bin/chromium; never "playwright install".
            "playwright",
            "SQLAlchemy>=2",
            "Flask-SQLAlchemy>=3",
            "croniter>=2",
            "pgserver>=0.1.4",
            "pytest-timeout>=2",
            # tests/test_docs.py builds the Sphinx site.
            "sphinx>=7.3",
            "furo>=2024.1",
        ],
    },
    classifiers=[
        "Framework :: Flask",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Distributed Computing",
    ],
)
