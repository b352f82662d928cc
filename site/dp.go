package site

import (
	"fmt"
	"net"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/dp"
	"github.com/ibcm-project/ibcm/internal/cliapp"
)

// openDP makes the site's distribution point from the dp section: its paths resolved
// against the site directory, its MP link dialling the MP's listener on loopback.
func openDP(cfg *Config, log zerolog.Logger) (*dp.DP, error) {
	s := *cfg.DP
	s.Resolve(cfg.Dir())
	listen := cfg.MP.InternetListen
	if cfg.MPIntranet() {
		listen = cfg.MP.IntranetListen
	}
	d, err := dp.New(dp.Options{Settings: s, Log: log, Version: cliapp.Version(), MPDial: loopback(listen)})
	if err != nil {
		return nil, fmt.Errorf("the distribution point: %w", err)
	}
	return d, nil
}

// loopback is where this process reaches a listener of its own: the listen address, with
// an unspecified host replaced by 127.0.0.1.
func loopback(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
