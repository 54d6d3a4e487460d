// grpc-js server options from the config: message limits, keepalive. (The connection listener
// enforces the connection age itself, so that it is logged: src/daemon/connections.ts.)
import type { ServerOptions } from '@grpc/grpc-js';
import type { Config } from '../config/schema.js';

export function grpcOptions(server: Config['server']): ServerOptions {
  return {
    'grpc.max_receive_message_length': server.max_request_bytes,
    'grpc.max_send_message_length': server.max_response_bytes,
    'grpc.max_concurrent_streams': server.max_concurrent_streams,
    'grpc.keepalive_time_ms': server.keepalive_time_seconds * 1000,
    'grpc.keepalive_timeout_ms': server.keepalive_timeout_seconds * 1000,
  };
}
