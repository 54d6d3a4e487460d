// pino JSON to stdout (journald picks it up), with secret-looking fields redacted
// wherever they appear in a log object.
import { pino, type Logger, type LevelWithSilent } from 'pino';

const SECRET_KEYS = ['secret', 'password', 'passphrase', 'token', 'api_key', 'apiKey', 'authorization', 'private_key', 'privateKey', 'key_pem', 'keyPem'];

export const REDACT_PATHS = SECRET_KEYS.flatMap((key) => [key, `*.${key}`, `*.*.${key}`]);

export function createLogger(level: LevelWithSilent, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'debvisor-rpcd' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: '[REDACTED]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}
