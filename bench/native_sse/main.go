// A native SSE upstream for part (c)'s question "is it the proxy or the
// Python fake?": a plain net/http server that answers
// POST /v1/chat/completions with {"stream": true, "fake_chunks": N} by
// flushing the head, then N events, each flushed, then a usage event and
// [DONE]; GET /health says OK. Listens on 127.0.0.1:<port> (argv[1]).
// Not run by the benchmark itself (it needs Go); see bench/README.md.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("OK")) })
	http.HandleFunc("/v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req struct {
			Stream bool `json:"stream"`
			Chunks int  `json:"fake_chunks"`
		}
		json.Unmarshal(body, &req)
		if !req.Stream {
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		w.WriteHeader(200)
		f.Flush()
		for i := 0; i < req.Chunks; i++ {
			fmt.Fprintf(w, "data: {\"id\": \"chatcmpl-1\", \"object\": \"chat.completion.chunk\", \"choices\": [{\"index\": 0, \"delta\": {\"content\": \"x\"}, \"finish_reason\": null}]}\n\n")
			f.Flush()
		}
		fmt.Fprintf(w, "data: {\"id\": \"chatcmpl-1\", \"choices\": [], \"usage\": {\"prompt_tokens\": 1, \"completion_tokens\": %d, \"total_tokens\": %d}}\n\ndata: [DONE]\n\n", req.Chunks, req.Chunks+1)
		f.Flush()
	})
	http.ListenAndServe("127.0.0.1:"+os.Args[1], nil)
}
