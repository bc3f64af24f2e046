// Command release writes the Traefik plugin's own repository tree, as
// Traefik's plugin catalogue wants it: the plugin's sources at the root,
// with .traefik.yml and a go.mod of the repository's module, and a vendor
// directory holding the packages of github.com/edgelimit/caddy-edgelimit
// it imports (the shared core: limiter, httpval, store, policy), so that
// Traefik, which runs a plugin from source in Yaegi, finds them.
//
//	go run ./cmd/release -out /tmp/traefik-edgelimit [-module github.com/edgelimit/traefik-edgelimit] [-version v0.1.0]
//
// Run it from traefik/harness; commit the tree to the plugin's repository
// and tag it with the version.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/edgelimit/caddy-edgelimit/traefik/harness/release"
)

func main() {
	out := flag.String("out", "", "the directory to write the tree to (it must not exist)")
	module := flag.String("module", release.DefaultModule, "the plugin repository's module path")
	version := flag.String("version", "v0.0.0", "the version of github.com/edgelimit/caddy-edgelimit its vendor directory holds")
	src := flag.String("src", "..", "the plugin's sources (traefik/ of this repository)")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "release: -out is required")
		os.Exit(2)
	}
	if err := release.Write(*src, *out, *module, *version); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
	fmt.Println("wrote", *out)
}
