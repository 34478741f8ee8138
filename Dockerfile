# The `backup` image: one image for the worker, poller and scheduler services of compose.yaml
# (and for one-off commands: `docker compose run --rm worker list`).
#
# It holds no secret key: backing up needs only the policies' public recipients (age1...).
# Restoring or verifying needs an identity, given at run time to the container that does it
# (a mounted secret named by BACKUP_IDENTITY), never baked in here.
#
# Two stages: the build stage has a C compiler and builds a wheel with the C parts
# (_fastwalk, _speedups); the runtime stage installs that wheel and has no compiler.

# --- build: compile the C parts into a wheel ------------------------------------------------
FROM python:3.11-slim AS build

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# setup.py and the C sources under backup/archive/: without a compiler the build stops.
COPY pyproject.toml setup.py README.md /src/
COPY backup /src/backup
COPY workers /src/workers
RUN pip wheel --no-deps --wheel-dir /wheels /src

# --- runtime -----------------------------------------------------------------------------------
FROM python:3.11-slim

# age, zstd and tar: every archive restores with these standard tools, inside the image too
# (they are also all docs/disaster-recovery.md's drill needs besides `backup`).
# awscli: the restore drill's check runs in this image, through the shell, and the one
# docs/snapshots.md documents lists the fork with `aws s3 ls ... | grep -q ...` (grep, sh and
# the rest of coreutils are in the base image). Debian's package runs on Debian's own
# python3, so its botocore pin never meets the one this package installs.
RUN apt-get update \
 && apt-get install -y --no-install-recommends age zstd tar awscli \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package (with the PostgreSQL driver for a shared inventory) from the built wheel.
COPY --from=build /wheels /wheels
RUN pip install "$(ls /wheels/backup-*.whl)[postgres]" && rm -rf /wheels

# The image must run the C parts docs/performance.md measures, not the slower fallback.
RUN python -c "import backup.archive._fastwalk, backup.archive._speedups" \
 && backup --version \
 && aws --version

# Run as an unprivileged user. Sources to back up are mounted read-only; give this user read
# access to them (or run the worker with `user:` set to their owner).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/backup backup \
 && mkdir -p /var/lib/backup/vault /var/lib/backup/restore \
 && chown -R backup:backup /var/lib/backup
USER backup
WORKDIR /home/backup

ENTRYPOINT ["backup"]
CMD ["--help"]
