# One image per binary: docker build --build-arg BIN=conversation-service .
FROM rust:1.95-bookworm AS build
ARG BIN
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ${BIN} && cp target/release/${BIN} /app

FROM debian:bookworm-slim
COPY --from=build /app /usr/local/bin/app
USER 65534
ENTRYPOINT ["/usr/local/bin/app"]
