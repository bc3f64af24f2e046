package callgrind

import (
	"net/http"
	"sync"
	"time"
)

// Drive sends the counted load: n requests over conns goroutines, each
// with a keep-alive connection of its own (under valgrind a request may
// take a second), goroutine g sending requests g, g+conns, ... with send.
// It returns the first error, each goroutine stopping at its own (send
// makes its requests with the context that bounds the load).
func Drive(conns, n int, send func(cl *http.Client, g, i int) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for g := 0; g < conns; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, DisableCompression: true}
			defer tr.CloseIdleConnections()
			cl := &http.Client{Transport: tr, Timeout: time.Minute}
			for i := g; i < n; i += conns {
				if err := send(cl, g, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
