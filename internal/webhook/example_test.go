package webhook_test

import (
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http"
	"time"

	"github.com/rexec/rexec/internal/webhook"
)

// A receiver checks the signature over the raw body before it trusts
// anything in it.
func ExampleVerify() {
	secret := []byte("the tenant's webhook secret")
	http.HandleFunc("/rexec", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "read error", http.StatusBadRequest)
			return
		}
		err = webhook.Verify(secret, r.Header.Get(webhook.SignatureHeader), r.Header.Get(webhook.TimestampHeader), body, 5*time.Minute)
		switch {
		case errors.Is(err, webhook.ErrBadTimestamp):
			http.Error(w, "stale request", http.StatusUnauthorized)
			return
		case err != nil:
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var p webhook.Payload
		if err := json.Unmarshal(body, &p); err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		// A retried notice comes again with the same X-Rexec-Delivery.
		log.Printf("%s: %s %s (delivery %s)", p.Rexec.Tenant, p.Rexec.Event, p.Rexec.RunID, r.Header.Get(webhook.DeliveryHeader))
		w.WriteHeader(http.StatusNoContent)
	})
}
