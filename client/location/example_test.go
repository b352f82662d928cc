package location_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"github.com/ibcm-project/ibcm/client/location"
	"github.com/ibcm-project/ibcm/internal/wire"
)

func ExampleDetect() {
	var roots *x509.CertPool // the site's roots, from the agent's state directory
	var cert tls.Certificate // the device's certificate and key
	d := location.Detect(context.Background(), location.Config{
		SiteCode:         "P01",
		IntranetSuffixes: []string{"corp.example"},
		InternetMPs:      []string{"mp.example.com:443"},
		Roots:            roots,
		ClientCert:       &cert,
	})
	fmt.Println(d.Location, d.MP, d.Reason)
	for _, s := range d.Evidence {
		fmt.Println(s.Kind, s.Target, s.Result, s.Error, s.Took)
	}
}

func ExampleHysteresis() {
	h := location.NewHysteresis(2)
	intranet := location.Decision{Location: wire.Intranet, MP: "https://mp1.corp.example:443"}
	internet := location.Decision{Location: wire.Internet, MP: "https://mp.example.com:443"}
	for _, d := range []location.Decision{intranet, internet, intranet, internet, internet} {
		switched, current := h.Observe(d, false)
		fmt.Println(d.Location, "->", current.Location, switched)
	}
	// Output:
	// intranet -> intranet true
	// internet -> intranet false
	// intranet -> intranet false
	// internet -> intranet false
	// internet -> internet true
}
