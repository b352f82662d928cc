// Package client owns the device agent's identity: its state directory (key, certificate
// chain, trust bundle, state record), enrollment with a one-time token against the site's
// CA, and renewal of the certificate over mutual TLS. Location detection, the MP/DP client
// and the remote-control agent will live here too.
//
// The package imports only internal/wire and the standard library, so the agent binary
// stays small (DESIGN.md §2).
//
// A device enrolls once, trusting the CA's TLS certificate only because its chain
// contains the root whose SHA-256 the administrator handed out with the token:
//
//	id, err := client.Enroll(ctx, client.EnrollOptions{
//		Dir: "/var/lib/ibcm-client", CAURL: "https://ca.corp.example:8443",
//		Token: token, RootSHA256: "3F:1A:...", FQDN: "pc-01.corp.example",
//	})
//
// From then on it trusts the roots it stored and renews before two thirds of the
// certificate's lifetime have passed:
//
//	id, err := client.Load(dir)
//	if id.RenewDue(time.Now()) {
//		id, err = client.Renew(ctx, client.RenewOptions{Dir: dir})
//	}
//
// # State directory
//
// The directory (mode 0700) holds key.pem (PKCS#8, 0600), cert.pem (leaf and issuing
// chain), roots.pem (the site's roots) and state.json (CA URL, device id, serial, expiry).
// Every file is written 0600 through a temporary file, fsync and rename. A change of
// several files (enrollment, renewal) is staged as "<name>.new" files first and committed
// by renaming them; see commit for how an interrupted change is finished or undone.
// During a renewal, renew-key.pem holds the key asked for until the answer is stored (see
// PendingKeyFile): the CA gives a certificate one successor, so retries must ask for the
// same key.
//
// The directory has one writer: the running agent, which holds LockDir for its life and
// does renewals and re-enrollments asked for on the command line itself, or, when no
// agent runs, the one command that holds LockDir.
package client
