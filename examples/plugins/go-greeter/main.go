// Command go-greeter is a FlexCore plugin written from docs/plugin-protocol.md alone, with Go's
// standard library and no SDK: length-prefixed JSON frames on stdin/stdout, the hello/ready
// handshake, concurrent calls answered by id, ping, shutdown and end of input.
//
// It owns the greet_user command (stream user-<user_id>, which must exist): the first greeting
// of a user decides one user.greeted event; greeting an already greeted user decides none.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
)

const (
	protocolVersion = 1
	pluginName      = "go-greeter"
	pluginVersion   = "0.1.0"
	maxFrameBytes   = 16 << 20
)

// errEndOfInput is a clean end of stdin: the stream ended before a frame's first byte.
var errEndOfInput = errors.New("end of input")

// readFrame reads one frame: a big-endian u32 length, then a JSON object with a string "type".
func readFrame(r io.Reader) (map[string]json.RawMessage, string, error) {
	var prefix [4]byte
	if n, err := io.ReadFull(r, prefix[:]); err != nil {
		if n == 0 && err == io.EOF {
			return nil, "", errEndOfInput
		}
		return nil, "", fmt.Errorf("the stream ended inside a frame's length: %w", err)
	}
	length := binary.BigEndian.Uint32(prefix[:])
	if length > maxFrameBytes {
		return nil, "", fmt.Errorf("a frame of %d bytes exceeds the 16 MiB limit", length)
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, "", fmt.Errorf("the stream ended inside a frame: %w", err)
	}
	var message map[string]json.RawMessage
	if err := json.Unmarshal(body, &message); err != nil || message == nil {
		return nil, "", fmt.Errorf("a frame is not a JSON object")
	}
	var kind string
	if err := json.Unmarshal(message["type"], &kind); err != nil {
		return nil, "", fmt.Errorf("a frame has no string type")
	}
	return message, kind, nil
}

// outbox writes whole frames to stdout, one at a time whichever goroutine sends.
type outbox struct {
	mu     sync.Mutex
	writer io.Writer
}

func (o *outbox) send(message interface{}) error {
	body, err := json.Marshal(message)
	if err != nil {
		return err
	}
	if len(body) > maxFrameBytes {
		return fmt.Errorf("a frame of %d bytes exceeds the 16 MiB limit", len(body))
	}
	frame := make([]byte, 4, 4+len(body))
	binary.BigEndian.PutUint32(frame, uint32(len(body)))
	frame = append(frame, body...)
	o.mu.Lock()
	defer o.mu.Unlock()
	_, err = o.writer.Write(frame)
	return err
}

// protocolError is the error object of a result: {code, message, errors}.
type protocolError struct {
	Code    string       `json:"code"`
	Message string       `json:"message"`
	Errors  []fieldError `json:"errors,omitempty"`
}

type fieldError struct {
	Path    string `json:"path"`
	Message string `json:"message"`
}

func invalidField(path, message string) *protocolError {
	return &protocolError{
		Code:    "validation_failed",
		Message: "greet_user is invalid",
		Errors:  []fieldError{{Path: path, Message: message}},
	}
}

// greetUserData is a command_handler call's data for greet_user.
type greetUserData struct {
	Payload struct {
		UserID *string `json:"user_id"`
		Name   *string `json:"name"`
	} `json:"payload"`
	StreamID string `json:"stream_id"`
	Version  *int64 `json:"version"`
	Events   []struct {
		EventType string `json:"event_type"`
	} `json:"events"`
}

type newEvent struct {
	EventType string      `json:"event_type"`
	Data      interface{} `json:"data"`
}

// greeter decides greet_user commands with the configured greeting.
type greeter struct {
	greeting string
}

func (g greeter) greetUser(raw json.RawMessage) (interface{}, *protocolError) {
	var data greetUserData
	if err := json.Unmarshal(raw, &data); err != nil {
		return nil, &protocolError{Code: "validation_failed", Message: "greet_user data is malformed: " + err.Error()}
	}
	userID, name := data.Payload.UserID, data.Payload.Name
	if userID == nil || strings.TrimSpace(*userID) == "" {
		return nil, invalidField("/user_id", "is required")
	}
	if name == nil || strings.TrimSpace(*name) == "" {
		return nil, invalidField("/name", "is required")
	}
	if data.Version == nil {
		return nil, &protocolError{Code: "not_found", Message: fmt.Sprintf("user %s does not exist", *userID)}
	}
	text := fmt.Sprintf("%s, %s!", g.greeting, strings.TrimSpace(*name))
	for _, event := range data.Events {
		if event.EventType == "user.greeted" {
			// Decided from data alone, so a retry after a conflict decides the same.
			return map[string]interface{}{
				"events": []newEvent{},
				"result": map[string]interface{}{"greeting": text, "already_greeted": true},
			}, nil
		}
	}
	greeted := newEvent{EventType: "user.greeted", Data: map[string]string{"user_id": *userID, "greeting": text}}
	return map[string]interface{}{
		"events": []newEvent{greeted},
		"result": map[string]interface{}{"greeting": text, "already_greeted": false},
	}, nil
}

// call is the part of a call message the plugin routes on.
type call struct {
	ID     *uint64         `json:"id"`
	Hook   string          `json:"hook"`
	Target string          `json:"target"`
	Data   json.RawMessage `json:"data"`
}

func (g greeter) answer(c call) map[string]interface{} {
	result := map[string]interface{}{"type": "result", "id": *c.ID}
	if c.Hook != "command_handler" || c.Target != "greet_user" {
		result["error"] = protocolError{Code: "internal", Message: fmt.Sprintf("no %s handler for %q", c.Hook, c.Target)}
		return result
	}
	ok, failure := g.greetUser(c.Data)
	if failure != nil {
		result["error"] = failure
	} else {
		result["ok"] = ok
	}
	return result
}

var knownHooks = map[string]bool{"before_command": true, "command_handler": true, "event_handler": true, "query_handler": true}

// handshake answers hello with ready, or refuse when the protocol or config will not do.
func handshake(in io.Reader, out *outbox) (greeter, bool, error) {
	hello, kind, err := readFrame(in)
	if err != nil {
		return greeter{}, false, err
	}
	if kind != "hello" {
		return greeter{}, false, fmt.Errorf("expected hello first, got %q", kind)
	}
	var offer struct {
		Protocol json.Number `json:"protocol"`
		Config   struct {
			Greeting *string `json:"greeting"`
		} `json:"config"`
	}
	helloBytes, _ := json.Marshal(hello)
	if err := json.Unmarshal(helloBytes, &offer); err != nil {
		return greeter{}, false, out.send(map[string]string{"type": "refuse", "message": "hello is malformed: " + err.Error()})
	}
	if offer.Protocol.String() != fmt.Sprint(protocolVersion) {
		message := fmt.Sprintf("%s speaks protocol %d, the engine offered %s", pluginName, protocolVersion, offer.Protocol)
		return greeter{}, false, out.send(map[string]string{"type": "refuse", "message": message})
	}
	g := greeter{greeting: "Hello"}
	if offer.Config.Greeting != nil {
		if strings.TrimSpace(*offer.Config.Greeting) == "" {
			return greeter{}, false, out.send(map[string]string{"type": "refuse", "message": "config.greeting must not be empty"})
		}
		g.greeting = *offer.Config.Greeting
	}
	ready := map[string]interface{}{
		"type": "ready", "protocol": protocolVersion, "name": pluginName, "version": pluginVersion,
		"hooks": map[string][]string{
			"before_command": {}, "command_handler": {"greet_user"}, "event_handler": {}, "query_handler": {},
		},
	}
	return g, true, out.send(ready)
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, pluginName+": protocol violation: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	out := &outbox{writer: os.Stdout}
	g, ready, err := handshake(os.Stdin, out)
	if errors.Is(err, errEndOfInput) {
		os.Exit(0)
	}
	if err != nil {
		fail("%v", err)
	}
	if !ready {
		os.Exit(1)
	}
	var inFlight sync.WaitGroup
	for {
		message, kind, err := readFrame(os.Stdin)
		if errors.Is(err, errEndOfInput) {
			// The engine is gone: nobody reads answers any more, so do not wait for them.
			os.Exit(0)
		}
		if err != nil {
			fail("%v", err)
		}
		switch kind {
		case "call":
			raw, _ := json.Marshal(message)
			var c call
			if err := json.Unmarshal(raw, &c); err != nil || c.ID == nil {
				fail("a call without an integer id")
			}
			if !knownHooks[c.Hook] {
				fail("call %d names no known hook: %q", *c.ID, c.Hook)
			}
			inFlight.Add(1)
			go func() {
				defer inFlight.Done()
				if err := out.send(g.answer(c)); err != nil {
					fmt.Fprintf(os.Stderr, "%s: the result of call %d was not delivered: %v\n", pluginName, *c.ID, err)
				}
			}()
		case "ping":
			if err := out.send(map[string]json.RawMessage{"type": json.RawMessage(`"pong"`), "id": message["id"]}); err != nil {
				os.Exit(0)
			}
		case "shutdown":
			inFlight.Wait()
			os.Exit(0)
		default:
			fail("unexpected %q message", kind)
		}
	}
}
