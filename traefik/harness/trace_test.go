package harness

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/traefik/yaegi/interp"
	"github.com/traefik/yaegi/stdlib"
)

// TestLimiterUnderYaegi runs limitertrace (random limits of every
// algorithm, calendars included, thousands of takes and refunds) compiled
// and under Yaegi, from the vendored limiter Traefik loads, and expects the
// same decisions to the microsecond. Yaegi has had its own ideas about
// constant expressions and tuple assignments; this is where they would
// show.
func TestLimiterUnderYaegi(t *testing.T) {
	loadPlugin(t) // lays out the GOPATH
	// limitertrace beside the plugin, where it finds the limiter the
	// plugin vendors.
	if err := copyPlugin("limitertrace", filepath.Join(loadedPath, "src", filepath.FromSlash(moduleName), "limitertrace")); err != nil {
		t.Fatal(err)
	}
	const steps, start = 3000, 1800000000000000
	for _, seed := range []int64{1, 2, 3} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			cmd := exec.Command("go", "run", "./limitertrace/run", "-seed", fmt.Sprint(seed), "-steps", fmt.Sprint(steps), "-start", fmt.Sprint(start))
			cmd.Stderr = os.Stderr
			compiled, err := cmd.Output()
			if err != nil {
				t.Fatalf("go run: %v", err)
			}
			var out bytes.Buffer
			i := interp.New(interp.Options{GoPath: loadedPath})
			if err := i.Use(stdlib.Symbols); err != nil {
				t.Fatal(err)
			}
			if _, err := i.Eval(`import "` + moduleName + `/limitertrace"`); err != nil {
				t.Fatal(err)
			}
			trace, err := i.Eval("limitertrace.Trace")
			if err != nil {
				t.Fatal(err)
			}
			trace.Call([]reflect.Value{reflect.ValueOf(io.Writer(&out)), reflect.ValueOf(seed), reflect.ValueOf(steps), reflect.ValueOf(int64(start))})
			if !bytes.Equal(out.Bytes(), compiled) {
				a, b := bytes.Split(compiled, []byte("\n")), bytes.Split(out.Bytes(), []byte("\n"))
				for n := 0; n < len(a) && n < len(b); n++ {
					if !bytes.Equal(a[n], b[n]) {
						t.Fatalf("line %d differs:\ncompiled %s\nyaegi    %s", n+1, a[n], b[n])
					}
				}
				t.Fatalf("compiled printed %d lines, Yaegi %d", len(a), len(b))
			}
		})
	}
}
