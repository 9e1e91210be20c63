# Wisp gateway image: `docker build -t wisp . && docker run --rm -p 8080:8080 -p 8443:8443/udp \
#   -p 1935:1935 -p 8890:8890/udp wisp --public-ip <the host's address>` (the browser must reach
#   UDP 8443 at that address; RTMP and SRT publishers 1935/tcp and 8890/udp).
# Both stages install their Debian packages with scripts/install-deps, the script CI runs, and
# CI plays the runtime stage without a Docker engine (scripts/image-check).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY scripts/install-deps scripts/install-deps
RUN ./scripts/install-deps build && rm -rf /var/lib/apt/lists/*
COPY . .
# The release profile keeps line tables for profiling; the image drops them (110 MB -> 15 MB
# for wisp) and keeps the symbols, so a panic's backtrace still names functions.
RUN cargo build --release --locked -p wisp -p wisp-transcoder -p whep-client \
 && install -D -m 0755 target/release/wisp target/release/wisp-transcoder \
      target/release/whep-client -t /out/bin \
 && strip --strip-debug /out/bin/*

FROM debian:12-slim
COPY scripts/install-deps /usr/local/lib/wisp/install-deps
RUN /usr/local/lib/wisp/install-deps runtime && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 wisp \
 && useradd --system --uid 10001 --gid wisp --create-home --home-dir /var/lib/wisp --shell /usr/sbin/nologin wisp
COPY --from=build /out/bin/ /usr/local/bin/
USER wisp
ENV WISP_STATE_DIR=/var/lib/wisp WISP_HTTP=0.0.0.0:8080 WISP_RTC=0.0.0.0:8443
EXPOSE 8080/tcp 8443/udp 1935/tcp 8890/udp
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["wisp", "serve"]
