# csvbridge in a container: `csvbridge watch`, configured from the environment.
#   docker build -t csvbridge .
#   docker run -d -v csvbridge-state:/var/lib/csvbridge -v /srv/exports:/srv/drop \
#     -e CSVBRIDGE_SITE_ID=1234 -e CSVBRIDGE_SOURCES__0__NAME=shop \
#     -e CSVBRIDGE_SOURCES__0__URL=file:///srv/drop --secret ... csvbridge
# See docs/container.md (and compose.yaml for a rehearsal against the emulator).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE CHANGELOG.md ./
COPY csvbridge ./csvbridge
RUN python -m venv /opt/csvbridge \
 && /opt/csvbridge/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/csvbridge/bin/csvbridge --version

FROM python:3.11-slim
# a system user owning only its state and drop folders; /run/secrets for Docker secrets
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/csvbridge \
      --shell /usr/sbin/nologin csvbridge \
 && install -d -o csvbridge -g csvbridge -m 0700 /var/lib/csvbridge \
 && install -d -o csvbridge -g csvbridge -m 0750 /srv/drop \
 && install -d -m 0755 /run/secrets
COPY --from=build /opt/csvbridge /opt/csvbridge
# every setting can come from the environment: CSVBRIDGE_<SECTION>__<KEY>
# (`csvbridge config show` prints the effective ones, secrets masked)
ENV PATH=/opt/csvbridge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CSVBRIDGE_STATE__DIR=/var/lib/csvbridge \
    CSVBRIDGE_SECRETS_DIR=/run/secrets \
    CSVBRIDGE_METRICS__HOST=0.0.0.0 \
    CSVBRIDGE_METRICS__PORT=9100 \
    CSVBRIDGE_LOGGING__FORMAT=json
VOLUME ["/var/lib/csvbridge"]
USER csvbridge
WORKDIR /var/lib/csvbridge
EXPOSE 9100
# no curl in slim images: Python's urllib asks the daemon's /healthz (503 or no answer
# raises, so the check fails)
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CSVBRIDGE_METRICS__PORT', '9100'), timeout=4)"]
ENTRYPOINT ["csvbridge"]
CMD ["watch"]
