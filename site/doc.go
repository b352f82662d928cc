// Package site owns a whole ibcm site on one server: its configuration file (site.yaml:
// strict decoding, defaults, validation that names the bad key), `ibcm site init` (the site
// directory, the CA hierarchy, the first certificates and the database) and running the
// site's roles in one process (`ibcm site up`, `ibcm ca serve`) with their listeners,
// health endpoints and clean shutdown.
package site
