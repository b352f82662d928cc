// Command ibcm runs every site role of ibcm (CA, and later MP and DP) and every admin
// command. See `ibcm help`.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "ibcm:", err)
		os.Exit(exitCode(err))
	}
}
