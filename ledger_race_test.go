package edgelimit

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

// TestLedgerOutlivedByDials: concurrent requests through a limit and a
// reverse proxy start dials that outlive them (a request takes a
// connection another one freed, its dial goes on) and read the request's
// variables, where the limit keeps its ledger. The handler must not write
// the variables on its way out (the race detector, or Go's map checks,
// fail this test when it does).
func TestLedgerOutlivedByDials(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	defer up.Close()
	site := e2e.Start(t, `%ADDR% {
	route {
		edge_limit {
			limit per_ip {
				rate 1000000/1h
			}
		}
		reverse_proxy `+strings.TrimPrefix(up.URL, "http://")+` {
			transport http {
				keepalive_idle_conns_per_host 2
			}
		}
	}
}`)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for round := 0; round < 5; round++ {
		var wg sync.WaitGroup
		for i := 0; i < 64; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := client.Get(site.Base + "/")
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusNoContent {
					t.Errorf("status %d", resp.StatusCode)
				}
			}()
		}
		wg.Wait()
	}
}
