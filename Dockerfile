# rexec-svc and rexec-cli in one small image.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/ ./cmd/rexec-svc ./cmd/rexec-cli

# A shell stays in the image: docker-compose's set-up step chains commands.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 rexec
COPY --from=build /out/rexec-svc /out/rexec-cli /usr/local/bin/
USER rexec
EXPOSE 8080
ENTRYPOINT ["rexec-svc"]
CMD ["serve", "-listen", "0.0.0.0:8080"]
