import { it } from 'vitest';
import { startEtcd } from '../support/etcd.js';
import { openEtcdStore } from '../../src/store/etcd.js';
const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);
it('timing', async () => {
  const e = await startEtcd();
  const store = await openEtcdStore({ endpoints: e.endpoints });
  const key = '/cas';
  await store.put(key, enc('0'));
  for (const rounds of [40, 200]) {
    let ops = 0; let ok = 0; let getMs = 0; let txnMs = 0;
    const t = performance.now();
    const writer = async () => {
      for (let round = 0; round < rounds; round++) {
        let t0 = performance.now();
        const kv = (await store.get(key))!;
        getMs += performance.now() - t0; t0 = performance.now();
        const r = await store.txn({ compare: [{ key, modRevision: kv.modRevision }], success: [{ type: 'put', key, value: enc(String(Number(dec(kv.value)) + 1)) }] });
        txnMs += performance.now() - t0;
        ops += 2; if (r.succeeded) ok++;
      }
    };
    await Promise.all(Array.from({ length: 50 }, writer));
    const s = (performance.now() - t) / 1000;
    console.log(`rounds=${rounds}: ${(ops / s).toFixed(0)} ops/s, ${ok} ok, ${s.toFixed(2)} s, avg get ${(getMs/(ops/2)).toFixed(1)} ms, avg txn ${(txnMs/(ops/2)).toFixed(1)} ms`);
  }
  await store.close(); await e.stop();
}, 120000);
