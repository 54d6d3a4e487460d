// AccessService.BackupStore: a consistent copy of the daemon's store, taken online and
// streamed while the daemon serves (src/store/*: Store.snapshot). The summary that ends the
// stream lets the client check it received every byte (src/store/backup-file.ts).
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import type { AccessService } from '../gen/debvisor/v1/access_pb.js';
import type { HandlersOf } from '../rpc/adapter.js';
import { SnapshotDigest } from '../store/backup-file.js';
import type { Store } from '../store/store.js';

export type BackupHandlers = Pick<HandlersOf<typeof AccessService>, 'backupStore'>;

export function backupHandlers(store: Store, takenBy: string): BackupHandlers {
  return {
    backupStore: (_request, ctx) =>
      (async function* () {
        const created = new Date();
        const digest = new SnapshotDigest();
        for await (const chunk of store.snapshot(ctx.signal)) {
          digest.add(chunk);
          yield { part: { case: 'chunk' as const, value: chunk } };
        }
        yield {
          part: {
            case: 'summary' as const,
            value: { backend: store.backend, sizeBytes: BigInt(digest.bytes), sha256: digest.hex(), takenBy, createTime: timestampFromDate(created) },
          },
        };
      })(),
  };
}
