/**
 * Errors of the remote vault backends besides VaultNotFoundError (backend.ts). Their messages
 * name the backend and the object, never a secret: the remote backends pass every message
 * that quotes a server or an SDK through their own redaction.
 */

/** Any other failure of a backend operation, after the retries it was given (if any). */
export class VaultBackendError extends Error {
  readonly code = 'VAULT_BACKEND_ERROR';
  /** HTTP status of the last response, when there was one. */
  readonly status: number | undefined;
  /** Attempts made (1 for an error that was not retried). */
  readonly attempts: number;
  /** Whether the last failure looked transient (the retries ran out rather than being skipped). */
  readonly transient: boolean;
  constructor(message: string, opts: { status?: number; attempts?: number; transient?: boolean } = {}) {
    super(message);
    this.name = 'VaultBackendError';
    this.status = opts.status;
    this.attempts = opts.attempts ?? 1;
    this.transient = opts.transient ?? false;
  }
}

/** A backend's configuration (spec or secret file) is missing, unreadable or invalid. */
export class VaultConfigError extends Error {
  readonly code = 'VAULT_CONFIG_INVALID';
  constructor(message: string) {
    super(message);
    this.name = 'VaultConfigError';
  }
}
