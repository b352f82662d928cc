package ca

import (
	_ "github.com/cloudflare/cfssl/ocsp"
	_ "github.com/smallstep/certificates/authority"
	_ "github.com/smallstep/certificates/authority/config"
	_ "github.com/smallstep/certificates/authority/provisioner"
	_ "github.com/smallstep/certificates/db"
	_ "go.step.sm/crypto/pemutil"
	_ "golang.org/x/crypto/ocsp"
)
