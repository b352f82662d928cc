// Package web holds the web console's built pages and assets: dist/, built from src/ by
// `make console-assets` (npm ci && npm run build, with esbuild bundling @xterm/xterm,
// @xterm/addon-fit and @novnc/novnc) and committed, so that building ibcm needs no node.
// dist/index.html is the shell of every page (the script routes by location.pathname),
// dist/logged-out.html the page after logout, dist/assets/ the script, the stylesheet and
// THIRD-PARTY-LICENSES.txt.
package web

import "embed"

// Dist is the built console: index.html, logged-out.html and assets/.
//
//go:embed dist
var Dist embed.FS
