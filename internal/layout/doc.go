// Package layout owns the tests of the repository's own rules (DESIGN.md §2–3, STYLE.md):
// every package says what it owns in a doc comment, the device agent links no server code,
// no CA library and no database driver, and the roles reach the PKI only through
// internal/trust. It has no code of its own.
package layout
