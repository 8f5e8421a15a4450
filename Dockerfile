# grouphook: a static binary on a distroless base, run as a non-root user.
#
#   docker build -t grouphook --build-arg VERSION=v1.2.3 .
#   docker run --rm -e DATABASE_URL=postgres://… grouphook grouphook migrate
#   docker run -d  -e DATABASE_URL=postgres://… -p 9187:9187 grouphook     # grouphook run

# Build stage: the Go toolchain of go.mod's "go" line.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# Static (no cgo), reproducible paths, version stamped into main.version.
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/grouphook ./cmd/grouphook \
 && /out/grouphook version

# Final stage: no shell, no package manager; CA certificates for https
# endpoints and tzdata are part of distroless/static. User 65532 (nonroot).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/grouphook /usr/local/bin/grouphook
USER 65532:65532
# /metrics, /healthz, /readyz (GROUPHOOK_HTTP_ADDR, default :9187).
EXPOSE 9187
# The same commands the tests run: "grouphook run" (default) and
# "grouphook migrate".
CMD ["grouphook", "run"]
