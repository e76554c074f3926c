#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/ from the golden frames in
fixtures/vectors. Each seed starts with the split selector byte the
targets read (see protocol/src/fuzzing.rs `splits`): 0 = one feed,
otherwise the count of split sizes that follow."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
VEC = os.path.join(HERE, '..', 'fixtures', 'vectors')

def read(name):
    with open(os.path.join(VEC, name), 'rb') as f:
        return f.read()

requests = sorted(n for n in os.listdir(VEC) if n.startswith(('request_', 'bad_')))
responses = sorted(n for n in os.listdir(VEC) if n.startswith('response_'))
session = [read(n) for n in ['request_1025.bin', 'request_1026.bin', 'request_1027.bin',
                             'request_1028.bin', 'request_1029.bin']]
seeds = {
    'request_decoder': {n: read(n) for n in requests},
    'request_roundtrip': {n: read(n) for n in requests},
    'server_session': {n: read(n) for n in requests},
    'response_decoder': {n: read(n) for n in responses},
    'sanitizer': {'windows': b'C:\\Users\\bob\\a.txt', 'dotdot': b'../..', 'plain': b'plain_1000.bin'},
}
seeds['server_session']['whole_session'] = b''.join(session)
seeds['server_session']['resend'] = read('request_1028.bin') + read('request_1030.bin') + \
    read('request_1028.bin') + read('request_1031.bin')
seeds['response_decoder']['all'] = b''.join(read(n) for n in responses)
# client_session: a mode byte (0 new client, 1 returning) then the server's stream.
new_client = b''.join(read(n) for n in ['response_2100.bin', 'response_2102.bin',
                                         'response_2103.bin', 'response_2104.bin'])
returning = b''.join(read(n) for n in ['response_2105.bin', 'response_2103.bin', 'response_2104.bin'])
denied = read('response_2106.bin') + new_client
client_seeds = {'new_client': b'\x00' + new_client, 'returning': b'\x01' + returning,
                'denied': b'\x01' + denied, 'errors': b'\x00' + read('response_2107.bin') * 4,
                'taken': b'\x00' + read('response_2101.bin')}
d = os.path.join(HERE, 'corpus', 'client_session')
os.makedirs(d, exist_ok=True)
for name, data in client_seeds.items():
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)
for target, files in seeds.items():
    d = os.path.join(HERE, 'corpus', target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        stem = name.replace('.bin', '')
        prefixes = {'one': b'\x00'} if target == 'sanitizer' else {'one': b'\x00', 'split': bytes([3, 0, 6, 22])}
        for tag, pre in prefixes.items():
            out = data if target == 'sanitizer' else pre + data
            with open(os.path.join(d, f'{stem}-{tag}'), 'wb') as f:
                f.write(out)
print('seeds written')
