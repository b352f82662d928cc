package fetch_test

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"golang.org/x/time/rate"

	"github.com/ibcm-project/ibcm/dp/fetch"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Download one file of a verified manifest from two DPs, the nearer first, at most 10 MB/s.
func ExampleGet() {
	var (
		m      *wire.Manifest // from manifest.Verify
		client *http.Client   // mutual TLS with the device's certificate
	)
	f := m.Files[0]
	res, err := fetch.Get(context.Background(), fetch.BlobOf(m, f), []fetch.Source{
		{Name: "dp1", URL: "https://dp1.corp.example:8446"},
		{Name: "dp2", URL: "https://dp2.corp.example:8446"},
	}, "/var/cache/ibcm/"+f.SHA256, fetch.Options{
		Client:       client,
		Limiter:      rate.NewLimiter(10e6, 64<<10),
		StallTimeout: 30 * time.Second,
		Progress:     func(have, total int64) { fmt.Printf("\r%d %%", have*100/max(total, 1)) },
	})
	if err != nil {
		fmt.Println(err) // *fetch.Error: why each DP failed
		return
	}
	fmt.Printf("from %s: %d bytes received, %d resumed\n", res.Source, res.Received, res.Resumed)
}
