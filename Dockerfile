# The `backup` image: one image for the worker, poller and scheduler services of compose.yaml
# (and for one-off commands: `docker compose run --rm worker list`).
#
# It holds no secret key: backing up needs only the policies' public recipients (age1...).
# Restoring or verifying needs an identity, given at run time to the container that does it
# (a mounted secret named by BACKUP_IDENTITY), never baked in here.
FROM python:3.11-slim

# age, zstd and tar: every archive restores with these standard tools, inside the image too.
RUN apt-get update \
 && apt-get install -y --no-install-recommends age zstd tar \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package (with the PostgreSQL driver for a shared inventory), then the build tree goes.
COPY pyproject.toml README.md /src/
COPY backup /src/backup
COPY workers /src/workers
RUN pip install '/src[postgres]' && rm -rf /src

# Run as an unprivileged user. Sources to back up are mounted read-only; give this user read
# access to them (or run the worker with `user:` set to their owner).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/backup backup \
 && mkdir -p /var/lib/backup/vault /var/lib/backup/restore \
 && chown -R backup:backup /var/lib/backup
USER backup
WORKDIR /home/backup

ENTRYPOINT ["backup"]
CMD ["--help"]
