// Landing page: "Create an event" is a plain link; "Join by code" is a GET form that
// this script only tidies up (trims the code) before navigating.
import { initTv } from './tv.js';

initTv();

const form = document.getElementById('join-form');
const input = document.getElementById('room-code');

form.addEventListener('submit', (event) => {
  event.preventDefault();
  // Codes are case-insensitive; upper case matches what the host page shows.
  const room = input.value.replace(/\s+/g, '').toUpperCase();
  if (!room) {
    input.focus();
    return;
  }
  location.href = `watch.html?room=${encodeURIComponent(room)}`;
});
