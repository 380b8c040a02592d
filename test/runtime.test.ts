import assert from 'node:assert/strict';
import { test } from 'node:test';

test('runs on Node 24, the runtime kube-drac targets', () => {
  console.log(`process.version = ${process.version}`);
  assert.match(process.version, /^v24\./);
});
