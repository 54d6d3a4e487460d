/** What a promise rejects with; fails the test when it resolves. For asserting on the error object itself. */
export async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}
