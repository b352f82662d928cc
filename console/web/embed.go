// Package web holds the web console's built pages and assets (index.html and assets/),
// embedded into the binary. This file is a placeholder until the npm project lands: it
// embeds a minimal shell so that the console package builds.
package web

import "embed"

// Dist is the built console: dist/index.html and dist/assets/.
//
//go:embed dist
var Dist embed.FS
