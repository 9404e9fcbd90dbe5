# hookline: multi-stage build of the `hookline` binary.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p api --bin hookline

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 hookline
COPY --from=build /src/target/release/hookline /usr/local/bin/hookline
USER hookline
# glibc's malloc keeps up to 8 arenas per core, one per thread that allocates at once; two
# are enough for hookline's few runtime threads and keep the peak RSS lower under a burst
# (BENCHMARKS.md, "Session 10").
ENV HOOKLINE_LISTEN=0.0.0.0:8080 HOOKLINE_LOG_FORMAT=json MALLOC_ARENA_MAX=2
EXPOSE 8080 9100
ENTRYPOINT ["hookline"]
CMD ["serve"]
