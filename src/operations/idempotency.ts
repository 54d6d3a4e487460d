// request_id for every mutating unary RPC: the first call's reply is kept for a day,
// and a retry with the same id by the same principal gets that reply instead of
// doing the work twice. Secret fields are cleared from kept replies (a secret is
// shown once, and is never stored in plain text).
import { clearField, clone, create, fromBinary, getOption, toBinary, type DescMessage, type DescMethod, type Message } from '@bufbuild/protobuf';
import { secret } from '../gen/debvisor/v1/options_pb.js';
import type { CallContext } from '../server/context.js';
import { InvalidArgumentError, RpcError } from '../server/errors.js';
import { LAYOUT, segment } from '../store/layout.js';
import type { Store } from '../store/store.js';

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const KEEP_SECONDS = 24 * 3600;
const PENDING = new Uint8Array([0]);

type Handler = (request: Message, ctx: CallContext) => Promise<unknown>;

/** Clears fields marked (debvisor.v1.secret), recursively through singular sub-messages. */
function withoutSecrets(schema: DescMessage, message: Message): Message {
  for (const field of schema.fields) {
    if (getOption(field, secret)) clearField(message, field);
    else if (field.fieldKind === 'message') {
      const value = (message as unknown as Record<string, unknown>)[field.localName];
      if (value && typeof value === 'object') withoutSecrets(field.message, value as Message);
    }
  }
  return message;
}

export function withIdempotency(store: Store, method: DescMethod, handler: Handler): Handler {
  const requestIdField = method.input.fields.find((field) => field.name === 'request_id');
  if (!requestIdField || method.methodKind !== 'unary') return handler;
  return async (request, ctx) => {
    const requestId = (request as unknown as Record<string, unknown>)[requestIdField.localName];
    if (typeof requestId !== 'string' || requestId === '') return handler(request, ctx);
    if (!REQUEST_ID.test(requestId)) throw new InvalidArgumentError('request_id', 'at most 128 characters of letters, digits and . _ : -');
    const principal = ctx.principal?.id;
    if (!principal) throw new RpcError('UNAUTHENTICATED', 'no principal');
    const key = `${LAYOUT.replies}${segment(principal)}/${segment(method.parent.typeName + '.' + method.name)}/${segment(requestId)}`;

    const kept = await store.get(key);
    if (kept && kept.value.length > 1) return fromBinary(method.output, kept.value.subarray(1));
    if (kept) throw new RpcError('ABORTED', `a request with request_id ${requestId} is still in progress; retry shortly`);

    const lease = await store.grantLease(KEEP_SECONDS);
    const claimed = await store.txn({ compare: [{ key, absent: true }], success: [{ type: 'put', key, value: PENDING, lease }] });
    if (!claimed.succeeded) {
      await store.revokeLease(lease);
      throw new RpcError('ABORTED', `a request with request_id ${requestId} is in progress; retry shortly`);
    }
    try {
      const reply = create(method.output, (await handler(request, ctx)) as never);
      const stored = toBinary(method.output, withoutSecrets(method.output, clone(method.output, reply)));
      await store.put(key, Buffer.concat([new Uint8Array([1]), stored]), { lease });
      return reply;
    } catch (err) {
      // A failed first attempt may be retried for real.
      await store.revokeLease(lease);
      throw err;
    }
  };
}
