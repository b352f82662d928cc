// Package dp is the distribution point role (DESIGN.md §8): its intranet and internet
// listeners behind mutual TLS, the content routes (blobs with Range, manifests), uploads to
// an origin DP, its link to an MP (registration, the feed of revocations and blocks,
// assignments, state reports) and scheduled validation of its library.
//
// The room:
//   - dp/manifest — the signed manifest of a package version and its verification.
//   - dp/fetch    — resumable, chunk-verified download of a blob from DPs (the agent and pull-DPs).
//   - dp/library  — the single-instance content store addressed by SHA-256.
//   - dp/pull     — a pull-DP fetching what is distributed to it from other DPs.
//
// A DP holds no database credentials: everything it knows of the site comes from an MP over
// mutual TLS, and it can change nothing a device runs (devices check the CA's signature).
package dp
