// Package integration holds the end-to-end tests of ibcm: the real `ibcm` and
// `ibcm-client` binaries (built by TestMain), real TLS on loopback ports, a throwaway
// PostgreSQL, and real peers (openssl, curl) checking what the site says.
package integration
