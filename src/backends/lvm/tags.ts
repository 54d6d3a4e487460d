// Ownership, snapshot labels and user tags stored as LVM tags.
// LVM tags allow only [A-Za-z0-9_+.-/=!:&#] (lvm(8) "--addtag"; '%' and '@' are refused, ',' separates
// tags in `lvs -o lv_tags`), so arbitrary Unicode text is escaped: every UTF-8 byte outside
// [A-Za-z0-9_+.-/!:&] becomes '#' and two upper-case hex digits. '=' and '#' themselves are always
// escaped, so the first '=' of a tag separates key from value and decoding is unambiguous.
//   debvisor.owner=<owner>        the principal that created the LV (volumes and snapshots)
//   debvisor.label=<label>        a snapshot's label
//   debvisor.tag.<key>=<value>    one user tag
// Tags not starting with "debvisor." were set outside DebVisor and are left alone.
import { InvalidArgumentError } from '../../rpc/errors.js';
import { MAX_USER_TAGS } from '../storage-backend.js';

export const OWNER_TAG = 'debvisor.owner=';
export const LABEL_TAG = 'debvisor.label=';
export const USER_TAG_PREFIX = 'debvisor.tag.';

/**
 * Longest encoded tag we write. LVM itself accepts longer ones, but every tag lives in the VG's
 * metadata area (1 MiB by default, shared by all LVs): unbounded tags could fill it for everyone.
 * The number of user tags per LV is capped for the same reason (MAX_USER_TAGS, the API's limit too).
 */
export const MAX_ENCODED_TAG_LENGTH = 1024;

const PLAIN = /^[A-Za-z0-9_+./!:&-]$/;

/** Escapes text for use inside an LVM tag (see the header). */
export function encodeTagText(text: string, field: string): string {
  // A lone surrogate has no UTF-8 form: it would come back as U+FFFD, a different string.
  if (!text.isWellFormed()) throw new InvalidArgumentError(field, 'must be valid Unicode (no lone surrogates)');
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    const ch = String.fromCharCode(byte);
    out += byte < 0x80 && PLAIN.test(ch) ? ch : `#${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** Reverses encodeTagText; undefined when the text is not a valid encoding (a tag written by someone else). */
export function decodeTagText(encoded: string): string | undefined {
  const bytes: number[] = [];
  for (let i = 0; i < encoded.length; i++) {
    const ch = encoded.charAt(i);
    if (ch === '#') {
      const hex = encoded.slice(i + 1, i + 3);
      if (!/^[0-9A-F]{2}$/.test(hex)) return undefined;
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else if (PLAIN.test(ch)) {
      bytes.push(ch.charCodeAt(0));
    } else {
      return undefined;
    }
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(Uint8Array.from(bytes));
  } catch {
    return undefined;
  }
}

function bounded(tag: string, field: string): string {
  if (tag.length > MAX_ENCODED_TAG_LENGTH) throw new InvalidArgumentError(field, `is too long once encoded as an LVM tag (at most ${MAX_ENCODED_TAG_LENGTH} characters)`);
  return tag;
}

export function ownerTag(owner: string): string {
  return bounded(OWNER_TAG + encodeTagText(owner, 'owner'), 'owner');
}

export function labelTag(label: string): string {
  return bounded(LABEL_TAG + encodeTagText(label, 'label'), 'label');
}

export function userTag(key: string, value: string): string {
  if (key.length === 0) throw new InvalidArgumentError('tags', 'keys must not be empty');
  return bounded(`${USER_TAG_PREFIX}${encodeTagText(key, 'tags')}=${encodeTagText(value, 'tags')}`, 'tags');
}

/** The LVM tags that record a new LV's owner, label and user tags ('' owner / label: no tag). */
export function encodeTags(meta: { owner?: string; label?: string; tags?: Readonly<Record<string, string>> }): string[] {
  const out: string[] = [];
  if (meta.owner) out.push(ownerTag(meta.owner));
  if (meta.label) out.push(labelTag(meta.label));
  const entries = Object.entries(meta.tags ?? {});
  if (entries.length > MAX_USER_TAGS) throw new InvalidArgumentError('tags', `at most ${MAX_USER_TAGS} tags per volume`);
  for (const [key, value] of entries) out.push(userTag(key, value));
  return out;
}

export interface DecodedTags {
  owner: string;
  label: string;
  tags: Record<string, string>;
}

/** Reads the `lv_tags` column ("a,b,c"): our tags decoded, foreign or undecodable ones ignored. */
export function decodeTags(lvTags: string): DecodedTags {
  let owner = '';
  let label = '';
  const user: [string, string][] = [];
  for (const tag of lvTags.split(',')) {
    if (tag.startsWith(OWNER_TAG)) {
      owner = decodeTagText(tag.slice(OWNER_TAG.length)) ?? '';
    } else if (tag.startsWith(LABEL_TAG)) {
      label = decodeTagText(tag.slice(LABEL_TAG.length)) ?? '';
    } else if (tag.startsWith(USER_TAG_PREFIX)) {
      const body = tag.slice(USER_TAG_PREFIX.length);
      const eq = body.indexOf('=');
      if (eq < 0) continue;
      const key = decodeTagText(body.slice(0, eq));
      const value = decodeTagText(body.slice(eq + 1));
      if (key !== undefined && key.length > 0 && value !== undefined) user.push([key, value]);
    }
  }
  // fromEntries defines own properties: a key "__proto__" stays a plain key, not a prototype.
  return { owner, label, tags: Object.fromEntries(user) };
}
