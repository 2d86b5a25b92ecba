package plugin

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// A request that does not decode — most often a device ID that is not valid
// UTF-8, which proto3 strings must be — is the caller's mistake, so it gets
// codes.InvalidArgument. gRPC itself would answer codes.Internal: it decodes
// before any handler or interceptor runs and turns every codec error into
// Internal. So the server's codec does not fail a request's decoding;
// it hands the error to the method's decode step (strictService), which
// answers InvalidArgument.

// requestCodec is the proto codec, except that decoding into a decodeTarget
// records the error in it instead of failing.
type requestCodec struct{ encoding.CodecV2 }

// decodeTarget is what strictService's methods decode into: the request
// message and, after decoding, its error.
type decodeTarget struct {
	msg any
	err error
}

func (c requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if t, ok := v.(*decodeTarget); ok {
		t.err = c.CodecV2.Unmarshal(data, t.msg)
		return nil
	}
	return c.CodecV2.Unmarshal(data, v)
}

// serverCodec is the codec every plugin server decodes requests with.
var serverCodec = grpc.ForceServerCodecV2(requestCodec{encoding.GetCodecV2(protocodec.Name)})

// devicePluginService is the DevicePlugin service with request decoding
// errors answered as codes.InvalidArgument (with serverCodec).
var devicePluginService = strictService(&pluginapi.DevicePlugin_ServiceDesc)

// strictService returns a copy of d whose unary methods decode through a
// decodeTarget and answer a request that does not decode with
// codes.InvalidArgument, wrapping ErrBadRequest in the log.
func strictService(d *grpc.ServiceDesc) *grpc.ServiceDesc {
	c := *d
	c.Methods = make([]grpc.MethodDesc, len(d.Methods))
	for i, m := range d.Methods {
		handler, method := m.Handler, m.MethodName
		m.Handler = func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			return handler(srv, ctx, func(v any) error {
				t := decodeTarget{msg: v}
				if err := dec(&t); err != nil {
					return err
				}
				if t.err == nil {
					return nil
				}
				err := fmt.Errorf("%w: %s request does not decode: %w", ErrBadRequest, method, t.err)
				if s, ok := srv.(*server); ok {
					err = fmt.Errorf("resource %q: %w", s.name, err)
					return s.reject(method, err)
				}
				return status.Error(codes.InvalidArgument, err.Error())
			}, ic)
		}
		c.Methods[i] = m
	}
	return &c
}
